"""Run time of a loaded compressed model: layer matvecs and whole-model decoding on the CPU.

Two parts, both written into ``benchmarks/results/decode_speed.json`` (a part replaces its entry):

``layers``  per-layer time of y = Ŵ x for one input row (batch-1 decoding) at SmolLM2-135M's and
            Llama-7B's layer shapes: dense float32 and bfloat16 (``torch.nn.functional.linear``), the
            compressed layer's fused forward (:mod:`slabopt.llm.fused`) and its torch reference
            (``SLaBLinear.reference_forward``), at ratios 0.5 and 0.7, rank 1, 1 and 2 threads. The
            compressed layers are random layers with the solver's budget (nnz(S) of ``slabopt.budget``
            per row, random mask, signs, U, V, 16-bit values): the time depends on the sizes, not the
            values. All variants are timed in one process, interleaved call by call; min and median.
``model``   whole-model ``generate`` (greedy, fixed prompt) tokens/s and resident memory for the
            shipped SmolLM2: dense float32, dense bfloat16 and folders written by ``slabopt compress``
            (loaded in float32 and in bfloat16), 1 and 2 threads, each in a fresh subprocess.

``rss``     the resident memory a user sees: in a fresh process, load (the dense model with
            ``transformers.AutoModelForCausalLM.from_pretrained`` of the de-quantised checkpoint, a
            compressed folder with ``slabopt.llm.load_compressed``), one greedy ``generate`` of
            ``--new-tokens`` tokens, then VmRSS and VmHWM (nothing trimmed, nothing else run).
            Both in bfloat16 by default, each ``--rounds`` times, alternating.

Usage::

    OMP_NUM_THREADS=2 python -m benchmarks.decode_speed layers
    OMP_NUM_THREADS=2 python -m benchmarks.decode_speed model --folder 0.5=/tmp/r05 --folder 0.7=/tmp/r07
    python -m benchmarks.decode_speed rss --folder /tmp/r05    # RSS of dense bf16 vs the folder
    python -m benchmarks.decode_speed plot        # docs/decode_speed.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "decode_speed.json"
PLOT = ROOT / "docs" / "decode_speed.png"

SHAPES = {  # (out, in) of nn.Linear
    "SmolLM2 q/o_proj": (576, 576),
    "SmolLM2 k/v_proj": (192, 576),
    "SmolLM2 gate/up_proj": (1536, 576),
    "SmolLM2 down_proj": (576, 1536),
    "Llama-7B q/k/v/o_proj": (4096, 4096),
    "Llama-7B gate/up_proj": (11008, 4096),
    "Llama-7B down_proj": (4096, 11008),
}
RATIOS = (0.5, 0.7)
THREADS = (1, 2)
PROMPT = "The history of the city begins"
CHILD_TIMEOUT_S = 300


# ------------------------------------------------------------------------------------ helpers
def _machine() -> dict:
    import torch

    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "numba": _numba_version(), "loadavg_start": os.getloadavg()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _numba_version() -> str | None:
    try:
        import numba

        return numba.__version__
    except ImportError:
        return None


def _rss_mib() -> dict:
    """Current and peak resident set size of this process (MiB)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) / 1024
    return out


def _rss_parts_mib() -> dict:
    """Resident memory by kind (MiB): anonymous (heap, tensors copied into memory), private clean
    (pages of mapped files read and not modified: tensors loaded from safetensors without a copy)
    and shared clean (mostly the code of the shared libraries)."""
    keys = ("Rss", "Anonymous", "Private_Clean", "Shared_Clean")
    out = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in keys:
            out[key] = int(val.split()[0]) / 1024
    return out


def _save(part: str, data) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    allres = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    allres[part] = data
    RESULTS.write_text(json.dumps(allres, indent=1))


def _summary(ts: list[float]) -> dict:
    return {"min_ms": 1e3 * min(ts), "median_ms": 1e3 * statistics.median(ts), "reps": len(ts)}


# ------------------------------------------------------------------------------------ layers
def random_layer(m: int, n: int, ratio: float, rank: int = 1, seed: int = 0):
    """A SLaBLinear of shape (m, n) with the solver's budget at ``ratio`` and random parts."""
    import torch
    from slabopt.llm.slablinear import SLaBLinear

    import slabopt

    k = slabopt.budget((m, n), ratio=ratio, rank=rank).nnz // m
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros(m, n, dtype=torch.bool)
    keep.scatter_(1, torch.rand(m, n, generator=g).topk(k, dim=1).indices, True)
    mod = SLaBLinear(n, m, nnz=m * k, rank=rank, has_signs=True)
    mod.mask.copy_(slabopt.pack_signs(keep))
    del keep
    mod.values.copy_(torch.randn(m * k, generator=g).to(torch.float16))
    mod.U.copy_(torch.randn(m, rank, generator=g).to(torch.float16))
    mod.V.copy_(torch.randn(n, rank, generator=g).to(torch.float16))
    mod.signs.copy_(torch.randint(0, 256, mod.signs.shape, generator=g, dtype=torch.uint8))
    if n % 8:
        mod.signs[:, -1] &= 0xFF << (8 - n % 8) & 0xFF
    mod.rebuild_index()
    return mod


def _time_interleaved(fns: dict, reps: dict) -> dict:
    """Call every function once per round, in turn, ``reps[name]`` rounds; seconds per call."""
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (and compile)
        fn()
    for r in range(max(reps.values())):
        for name, fn in fns.items():
            if r < reps[name]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


REF = "compressed reference"


def _variants(mod, W32, x32) -> dict:
    """The four timed calls of one layer (bf16 copies made here, outside the timing)."""
    import torch.nn.functional as F

    W16, x16 = W32.to(torch_bf16()), x32.to(torch_bf16())
    return {"dense fp32": lambda: F.linear(x32, W32), "dense bf16": lambda: F.linear(x16, W16),
            "compressed fused": lambda: mod(x32), REF: lambda: mod.reference_forward(x32)}


def torch_bf16():
    import torch

    return torch.bfloat16


def bench_layers(reps: int = 30, ref_reps: int = 3, shapes: dict | None = None) -> list[dict]:
    import torch

    rows = []
    for label, (m, n) in (shapes or SHAPES).items():
        W32 = torch.randn(m, n)
        x32 = torch.randn(1, n)
        for ratio in RATIOS:
            mod = random_layer(m, n, ratio)
            assert mod.fused_applies(x32)
            for threads in THREADS:
                torch.set_num_threads(threads)
                fns = _variants(mod, W32, x32)
                n_ref = ref_reps if m * n > 1 << 22 else reps
                with torch.no_grad():
                    times = _time_interleaved(fns, {**dict.fromkeys(fns, reps), REF: n_ref})
                row = {"layer": label, "shape": [m, n], "ratio": ratio, "rank": 1, "threads": threads,
                       "nnz": mod.nnz, "compressed_bytes": mod.storage_bytes(),
                       "loadavg": os.getloadavg()[0],
                       **{name: _summary(ts) for name, ts in times.items()}}
                rows.append(row)
                print(_layer_line(row), flush=True)
            del mod
    return rows


def _layer_line(row: dict) -> str:
    parts = [f"{row['layer']:22s} r={row['ratio']} t={row['threads']}"]
    for name in ("dense fp32", "dense bf16", "compressed fused", "compressed reference"):
        parts.append(f"{name} {row[name]['median_ms']:.3f}")
    return " | ".join(parts) + " ms (median)"


def bench_rows(reps: int = 10) -> list[dict]:
    """Time per call against the number of input rows (one thread): the fused kernel, the blocked
    rebuild (``blocked_forward``) and a dense float32 matmul with Ŵ kept (``set_cache_weight``),
    ratio 0.5, rank 1 -- where ``fused.MAX_ROWS`` comes from."""
    import torch

    torch.set_num_threads(1)
    rows = []
    for label in ("SmolLM2 q/o_proj", "SmolLM2 gate/up_proj", "Llama-7B q/k/v/o_proj"):
        m, n = SHAPES[label]
        mod = random_layer(m, n, 0.5)
        W = mod.reconstruct(torch.float32)
        for k in (1, 2, 4, 8, 16, 64):
            x = torch.randn(k, n)
            fns = {"fused": lambda x=x, mod=mod: mod.fused_forward(x),
                   "blocked": lambda x=x, mod=mod: mod.blocked_forward(x),
                   "dense fp32": lambda x=x, W=W: x @ W.T}
            with torch.no_grad():
                times = _time_interleaved(fns, dict.fromkeys(fns, reps))
            row = {"layer": label, "shape": [m, n], "rows": k, **{v: _summary(t) for v, t in times.items()}}
            rows.append(row)
            print(label, k, {v: round(row[v]["median_ms"], 3) for v in fns}, flush=True)
    return rows


# ------------------------------------------------------------------------------------ whole model
def child(kind: str, folder: str | None, dtype: str, threads: int, new_tokens: int, reps: int) -> dict:
    """Load one model in this (fresh) process, greedy-generate, report tokens/s and memory."""
    import torch

    torch.set_num_threads(threads)
    from slabopt.llm.data import load_model

    t0 = time.perf_counter()
    if kind == "dense":
        model, tok, _ = load_model(None, dtype)
    else:
        from slabopt.llm.loading import load_compressed
        from transformers import AutoTokenizer

        model, _ = load_compressed(folder, getattr(torch, dtype))
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    load_s = time.perf_counter() - t0
    after_load = _rss_mib()
    tensor_bytes = sum(t.numel() * t.element_size() for t in
                       {id(t): t for t in [*model.parameters(), *model.buffers()]}.values())
    ids = tok(PROMPT, return_tensors="pt").input_ids
    kw = {"do_sample": False, "min_new_tokens": new_tokens, "max_new_tokens": new_tokens,
          "pad_token_id": tok.eos_token_id}
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(ids, **{**kw, "min_new_tokens": 2, "max_new_tokens": 2})  # warm-up (JIT load)
        warm_s = time.perf_counter() - t0
        times, text = [], ""
        for _ in range(reps):
            t0 = time.perf_counter()
            out = model.generate(ids, **kw)
            times.append(time.perf_counter() - t0)
            text = tok.decode(out[0, ids.shape[1]:])
    parts = _rss_parts_mib()
    from slabopt.llm.heap import release_freed_memory

    release_freed_memory()  # what glibc keeps of freed heap memory, given back (every variant alike)
    trimmed = _rss_parts_mib()
    return {"kind": kind, "folder": folder, "dtype": dtype, "threads": threads, "new_tokens": new_tokens,
            "prompt_tokens": int(ids.shape[1]), "load_s": load_s, "warmup_s": warm_s,
            "tokens_per_s_best": new_tokens / min(times),
            "tokens_per_s_median": new_tokens / statistics.median(times), "generate_s": times,
            "tensor_mib": tensor_bytes / 2**20, "rss_after_load_mib": after_load["VmRSS"],
            **{f"{k}_after_generate_mib": v for k, v in _rss_mib().items()},
            "rss_parts_after_generate_mib": parts, "rss_parts_after_trim_mib": trimmed,
            "loadavg": os.getloadavg()[0], "text": text}


def rss_child(folder: str | None, dtype: str, new_tokens: int) -> dict:
    """In this fresh process: load the dense model (``folder`` None) or a compressed folder, one
    greedy ``generate``, then the resident memory as the user's process holds it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    if folder is None:
        from slabopt.llm.data import dequantised_checkpoint

        path = dequantised_checkpoint(progress=False)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, local_files_only=True)
    else:
        from slabopt.llm.loading import load_compressed

        path = Path(folder)
        model, _ = load_compressed(path, torch_dtype)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        model.generate(ids, do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens,
                       pad_token_id=tok.eos_token_id)
    return {"kind": "dense" if folder is None else "compressed", "folder": folder, "dtype": dtype,
            "new_tokens": new_tokens, **_rss_mib(), "parts": _rss_parts_mib()}


def bench_rss(folder: str, dtype: str, new_tokens: int, rounds: int) -> list[dict]:
    """:func:`rss_child` of the dense model and of ``folder``, each in a fresh process, alternating."""
    rows = []
    for rnd in range(rounds):
        for target in (None, folder):
            cmd = [sys.executable, "-m", "benchmarks.decode_speed", "rss-child", "--dtype", dtype,
                   "--new-tokens", str(new_tokens)] + ([] if target is None else ["--folder", target])
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            row = {**json.loads(res.stdout.strip().splitlines()[-1]), "round": rnd}
            rows.append(row)
            print(f"{row['kind']:10s} {dtype}: VmRSS {row['VmRSS']:.0f} MiB, VmHWM {row['VmHWM']:.0f} MiB",
                  flush=True)
    return rows


def bench_model(folders: dict[str, str], new_tokens: int = 32, reps: int = 3, rounds: int = 2,
                threads_list: tuple[int, ...] = THREADS) -> list[dict]:
    """Every configuration in a fresh subprocess, all of them once per round (so that a change of
    the machine's load hits every configuration alike)."""
    configs = [("dense", None, "float32", None), ("dense", None, "bfloat16", None)]
    for ratio, folder in folders.items():
        configs += [("compressed", folder, "float32", ratio), ("compressed", folder, "bfloat16", ratio)]
    rows = []
    for rnd, threads in [(r, t) for r in range(rounds) for t in threads_list]:
        for kind, folder, dtype, ratio in configs:
            cmd = [sys.executable, "-m", "benchmarks.decode_speed", "child", "--kind", kind, "--dtype", dtype,
                   "--threads", str(threads), "--new-tokens", str(new_tokens), "--reps", str(reps)]
            if folder:
                cmd += ["--folder", folder]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False,
                                     timeout=CHILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rows.append({"kind": kind, "dtype": dtype, "threads": threads, "ratio": ratio, "round": rnd,
                             "timed_out_s": CHILD_TIMEOUT_S})
                print(f"{kind} {dtype} ratio={ratio} t={threads}: timed out", flush=True)
                continue
            if res.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
            row = {**json.loads(res.stdout.strip().splitlines()[-1]), "ratio": ratio, "round": rnd}
            rows.append(row)
            print(f"{kind:10s} {dtype:8s} ratio={ratio} t={threads}: {row['tokens_per_s_median']:.1f} tok/s "
                  f"(best {row['tokens_per_s_best']:.1f}), RSS {row['VmRSS_after_generate_mib']:.0f} MiB, "
                  f"tensors {row['tensor_mib']:.0f} MiB", flush=True)
    return rows


# ------------------------------------------------------------------------------------ plot
def plot(part: str = "layers") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(RESULTS.read_text())
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    variants = ("dense fp32", "dense bf16", "compressed fused")
    rows = [r for r in data[part]["rows"] if r["ratio"] == 0.5]
    for threads, ax in zip(THREADS, axes, strict=True):
        sel = [r for r in rows if r["threads"] == threads]
        width = 0.27
        for j, v in enumerate(variants):
            ax.bar([i + (j - 1) * width for i in range(len(sel))], [r[v]["median_ms"] for r in sel], width,
                   label=v)
        ax.set_xticks(range(len(sel)), [f"{r['layer']}\n{r['shape'][0]}×{r['shape'][1]}" for r in sel],
                      rotation=30, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("ms per matvec (median)")
        ax.set_title(f"batch-1 matvec, ratio 0.5, rank 1, {threads} thread{'s' * (threads > 1)}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)
    print(f"wrote {PLOT}")


def tables() -> str:
    """The Markdown tables of docs/benchmarks.md from the JSON."""
    data = json.loads(RESULTS.read_text())
    out = []
    names = ("dense fp32", "dense bf16", "compressed fused", REF)
    for part, threads in ((p, t) for p in data if p.startswith("layers") for t in THREADS):
        out += [f"\n**Batch-1 matvec (`{part}`), {threads} thread{'s' * (threads > 1)}** (ms, median / min; "
                "fused ÷ fp32 and fused ÷ bf16 of the medians)\n",
                "| layer | m×n | ratio | " + " | ".join(names) + " | fused/fp32 | fused/bf16 |",
                "|---|---|---|" + "---|" * (len(names) + 2)]
        for r in data[part]["rows"]:
            if r["threads"] != threads:
                continue
            cells = [f"{r[v]['median_ms']:.3f} / {r[v]['min_ms']:.3f}" for v in names]
            fused = r["compressed fused"]["median_ms"]
            cells += [f"{fused / r[v]['median_ms']:.2f}" for v in names[:2]]
            out.append(f"| {r['layer']} | {r['shape'][0]}×{r['shape'][1]} | {r['ratio']} | "
                       + " | ".join(cells) + " |")
    for part in (p for p in data if p.startswith("model")):
        out += [f"\n**Whole model (`{part}`), SmolLM2-135M, greedy `generate`** (tokens/s: median of 3 "
                "runs in each of two rounds, and the best run; memory in MiB after generating, of the last "
                "round)\n",
                "| model | weights dtype | threads | tokens/s round 1 (median) | round 2 (median) | best | "
                "tensors | RSS | RSS after malloc_trim | of which private clean | anonymous | shared clean |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        groups: dict = {}
        for r in data[part]["rows"]:
            groups.setdefault((r["kind"], r.get("ratio"), r["dtype"], r["threads"]), []).append(r)
        for (kind, ratio, dtype, threads), rs in groups.items():
            ok = [r for r in rs if "timed_out_s" not in r]
            name = "dense" if kind == "dense" else f"compressed {ratio}"
            if not ok:
                out.append(f"| {name} | {dtype} | {threads} | timed out | timed out | | | | | | | |")
                continue
            best = max(r["tokens_per_s_best"] for r in ok)
            per_round = {r["round"]: f"{r['tokens_per_s_median']:.1f}" for r in ok}
            last = ok[-1]
            tr = last["rss_parts_after_trim_mib"]
            cells = [name, dtype, threads, per_round.get(0, "timed out"), per_round.get(1, "timed out"),
                     f"{best:.1f}", f"{last['tensor_mib']:.0f}",
                     f"{last['VmRSS_after_generate_mib']:.0f}",
                     *(f"{tr[k]:.0f}" for k in ("Rss", "Private_Clean", "Anonymous", "Shared_Clean"))]
            note = f" ({len(rs) - len(ok)} run timed out)" if len(ok) < len(rs) else ""
            out.append("| " + " | ".join(map(str, cells)) + " |" + note)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lay = sub.add_parser("layers")
    lay.add_argument("--reps", type=int, default=30)
    lay.add_argument("--ref-reps", type=int, default=3, help="reps of the slow reference on Llama shapes")
    lay.add_argument("--part", default="layers", help="entry of the results file to write (default: layers)")
    mod = sub.add_parser("model")
    mod.add_argument("--folder", action="append", default=[], help="RATIO=DIR of a compressed SmolLM2")
    mod.add_argument("--new-tokens", type=int, default=32)
    mod.add_argument("--reps", type=int, default=3)
    mod.add_argument("--rounds", type=int, default=2)
    mod.add_argument("--threads", type=int, nargs="+", default=list(THREADS), help="thread counts to run")
    mod.add_argument("--part", default="model", help="entry of the results file to write (default: model)")
    ch = sub.add_parser("child")
    ch.add_argument("--kind", choices=["dense", "compressed"], required=True)
    ch.add_argument("--folder")
    ch.add_argument("--dtype", default="float32")
    ch.add_argument("--threads", type=int, default=1)
    ch.add_argument("--new-tokens", type=int, default=32)
    ch.add_argument("--reps", type=int, default=3)
    rs = sub.add_parser("rss")
    rs.add_argument("--folder", required=True, help="a folder written by slabopt compress (SmolLM2)")
    rs.add_argument("--dtype", default="bfloat16")
    rs.add_argument("--new-tokens", type=int, default=16)
    rs.add_argument("--rounds", type=int, default=2)
    rc = sub.add_parser("rss-child")
    rc.add_argument("--folder")
    rc.add_argument("--dtype", default="bfloat16")
    rc.add_argument("--new-tokens", type=int, default=16)
    pl = sub.add_parser("plot")
    pl.add_argument("--part", default="layers", help="layers entry of the results file (default: layers)")
    sub.add_parser("tables")
    sub.add_parser("rows")
    args = ap.parse_args(argv)
    if args.cmd == "layers":
        info = _machine()
        rows = bench_layers(args.reps, args.ref_reps)
        _save(args.part, {"machine": {**info, "loadavg_end": os.getloadavg()}, "command": " ".join(sys.argv),
                         "rows": rows})
    elif args.cmd == "model":
        info = _machine()
        folders = dict(f.split("=", 1) for f in args.folder)
        rows = bench_model(folders, args.new_tokens, args.reps, args.rounds, tuple(args.threads))
        _save(args.part, {"machine": {**info, "loadavg_end": os.getloadavg()}, "command": " ".join(sys.argv),
                        "rows": rows})
    elif args.cmd == "child":
        print(json.dumps(child(args.kind, args.folder, args.dtype, args.threads, args.new_tokens, args.reps)))
    elif args.cmd == "rss":
        rows = bench_rss(args.folder, args.dtype, args.new_tokens, args.rounds)
        _save("rss", {"machine": _machine(), "command": " ".join(sys.argv), "rows": rows})
    elif args.cmd == "rss-child":
        print(json.dumps(rss_child(args.folder, args.dtype, args.new_tokens)))
    elif args.cmd == "rows":
        _save("rows", {"machine": _machine(), "command": " ".join(sys.argv), "rows": bench_rows()})
    elif args.cmd == "tables":
        print(tables())
    else:
        plot(args.part)


if __name__ == "__main__":
    main()
