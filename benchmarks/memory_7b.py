"""Peak memory of ``slabopt compress`` on a 7B-shaped model in bfloat16.

Builds a random ``LlamaForCausalLM`` with the shapes of Llama-7B (hidden 4096, intermediate 11008,
32 attention and 32 key/value heads, untied embeddings, 2048 positions) but only ``L`` decoder
blocks, saves it in bfloat16 safetensors together with the tokenizer of the shipped SmolLM2
checkpoint (whose ids go up to 49151, so the vocabulary is 49152 instead of Llama's 32000), then
runs ::

    python -m slabopt.llm compress --model DIR --dtype bfloat16 --device cpu --out OUTDIR --verbose \
        [--calib-tokens N] [--seqlen N] [--max-iter N] [--threads N] [--compress-args "..."]

(compress's own defaults unless an option is given) in a fresh process and records its peak
resident memory (``ru_maxrss`` of that child from ``os.wait4``, plus VmRSS / RssAnon / RssFile
polled from ``/proc/PID/status``), its wall time and the per-block times (``manifest.json``,
``layers.log`` and the time stamps of its output). The model is built in a separate process, so
the builder's memory does not count. The target is peak RSS <= checkpoint size (bf16 safetensors
bytes) + 2.5 GiB, whatever ``L``.

Run (after ``python -c "from slabopt.llm.data import load_model; load_model()"`` has cached the
SmolLM2 checkpoint once, for its tokenizer files)::

    .venv/bin/python benchmarks/memory_7b.py --layers 2 --threads 1      # compress's defaults

``--trace L`` repeats one run with phase markers (a few pipeline functions wrapped in the child
process; no file changed), ``--probe`` measures one 11008×4096 layer's steps, and
``--malloc-threshold BYTES`` runs compress with glibc's MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_.
The commands of each table are in docs/benchmarks.md.

Writes ``benchmarks/results/memory_7b.json`` and ``docs/memory_7b.png`` and prints a Markdown
table. Model folders and outputs go to ``--workdir`` (default ``/tmp/slabopt_memory_7b``) and are
deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "benchmarks" / "results" / "memory_7b.json"
OUT_PNG = REPO / "docs" / "memory_7b.png"
GIB = 1 << 30
TARGET_OVERHEAD = 2.5 * GIB
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")
SHAPES = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
              max_position_embeddings=2048, tie_word_embeddings=False, rms_norm_eps=1e-5)
VOCAB_LLAMA, VOCAB_SMOLLM2 = 32000, 49152


# ------------------------------------------------------------------------------- the model
def smollm2_dir() -> Path:
    root = REPO / ".cache" / "slabopt"
    found = sorted(p for p in root.glob("smollm2-135m-instruct-*") if (p / "tokenizer.json").is_file()
                   and not p.name.endswith(".tmp"))
    if not found:
        sys.exit("no cached SmolLM2 checkpoint; run first: .venv/bin/python -c "
                 "\"from slabopt.llm.data import load_model; load_model()\"")
    return found[-1]


def build(layers: int, folder: Path, seed: int = 0) -> None:
    """Write the random bf16 checkpoint (run in its own process: ``memory_7b.py build``)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    vocab = VOCAB_LLAMA if len(tok) <= VOCAB_LLAMA else VOCAB_SMOLLM2
    assert len(tok) <= vocab, (len(tok), vocab)
    config = LlamaConfig(**SHAPES, num_hidden_layers=layers, vocab_size=vocab,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, dtype="bfloat16")
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.bfloat16)  # parameters are created (and initialised) in bf16
    model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(torch.float32)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))  # safetensors (the only format of transformers >= 5), one shard
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, tmp / name)
    (tmp / "memory_7b_source.json").write_text(json.dumps(
        {"layers": layers, "seed": seed, "vocab_size": vocab, "tokenizer_from": tok_dir.name}, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def ensure_model(layers: int, folder: Path) -> tuple[int, int]:
    """Build the checkpoint in a subprocess unless present; (bf16 safetensors bytes, vocab size)."""
    marker = folder / "memory_7b_source.json"
    if not (marker.is_file() and json.loads(marker.read_text())["layers"] == layers):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "build", "--layers", str(layers), "--dir", str(folder)],
                       check=True)
        print(f"built {folder} in {time.perf_counter() - t0:.0f}s", flush=True)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return size, json.loads(marker.read_text())["vocab_size"]


def default_config(compress_args: list[str]):
    """The ``CompressConfig`` that ``slabopt compress`` builds from its defaults and
    ``compress_args`` (captured where the CLI hands it to ``compress_checkpoint``)."""
    from slabopt.llm import cli, pipeline

    class Captured(BaseException):
        pass

    def capture(model, out_dir, config, **kwargs):
        """Stand-in for ``compress_checkpoint``: hand the config back."""
        raise Captured(config)

    run, pipeline.compress_checkpoint = pipeline.compress_checkpoint, capture
    try:
        cli.main(["compress", "--out", "unused", *compress_args])
    except Captured as c:
        return c.args[0]
    finally:
        pipeline.compress_checkpoint = run
    raise RuntimeError("slabopt compress did not reach compress_checkpoint")


def _rss() -> dict[str, int]:
    t = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", t, re.M).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _step(fn):
    """(fn(), {"peak", "kept"}): VmHWM after a reset (``/proc/self/clear_refs``) and VmRSS after
    the call, both relative to VmRSS just before it."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _rss()["VmRSS"]
    out = fn()
    after = _rss()
    return out, {"peak": after["VmHWM"] - before, "kept": after["VmRSS"] - before}


def probe(compress_args: list[str]) -> dict:
    """Memory of one 11008×4096 layer through the pipeline's steps, in this process (``probe``).

    The settings are those of ``slabopt compress`` with ``compress_args`` (:func:`default_config`),
    and the calls the pipeline's: ``pipeline._solve_layer`` on a bf16 weight (cast to float32 there),
    ``SLaBLinear.from_result`` (fp16 values, bf16 compute) and the block's calibration forward with
    the layer's dense Ŵ cached (``set_cache_weight(True)``, 512 tokens). Peaks are VmHWM after a
    reset, relative to VmRSS just before the step; "kept" is what stays.
    """
    import torch
    from slabopt.llm import heap, pipeline
    from slabopt.llm.slablinear import SLaBLinear

    heap.limit_heap_retention()  # as `slabopt compress` does at start
    cfg = default_config(compress_args)
    need_gram = cfg.check().needs_gram
    torch.manual_seed(0)
    m, n = 11008, 4096
    lin = torch.nn.Linear(n, m, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(m, n) * 0.02)
    x = torch.randn(512, n).to(torch.bfloat16)
    stats = {"sq": (x.float() ** 2).sum(0)}
    if need_gram:
        stats["gram"] = x.float().T @ x.float()
    res, solve = _step(lambda: pipeline._solve_layer(lin, stats, 0, 4, "mlp.gate_proj", cfg, need_gram))
    mod, build = _step(lambda r=res: SLaBLinear.from_result(r, store_dtype=torch.float16,
                                                            compute_dtype=torch.bfloat16))
    q = res.settings.get("sparse_bits_used")
    res = None  # as in the pipeline, only the module stays
    mod.set_cache_weight(True)
    _, forward = _step(lambda: mod(x))
    buffers = {k: v.numel() * v.element_size() for k, v in mod.named_buffers()}
    return {"shape": [m, n], "settings": {k: str(v) for k, v in vars(cfg).items()}, "sparse_bits_used": q,
            "dense_bf16_bytes": 2 * m * n, "nnz": mod.nnz, "solve": solve, "from_result": build,
            "cached_forward": forward, "buffers_bytes": buffers, "module_bytes": sum(buffers.values()),
            "stored_bytes": mod.storage_bytes(),
            "cached_weight_bytes": mod._W.numel() * mod._W.element_size()}


# --------------------------------------------------------------------------- measurement
def _status(pid: int) -> dict[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        if m:
            out[key] = int(m.group(1)) * 1024
    return out or None


# Diagnostic run (--trace): the same command, in a process that first wraps a few pipeline
# functions so that they print "[trace] <phase> | <VmRSS/RssAnon/RssFile MiB>" when they start and end.
# It changes no file; the polled samples between two markers give each phase's peak.
TRACE = r"""
import functools, re, sys
from slabopt.llm import cli, data, pipeline
from slabopt.llm.slablinear import SLaBLinear

def mem():
    t = open('/proc/self/status').read()
    kib = {k: int(re.search(k + r':\s+(\d+)', t).group(1)) for k in ('VmRSS', 'RssAnon', 'RssFile')}
    return ' '.join(f"{k}={v // 1024}MiB" for k, v in kib.items())

def wrap(owner, name, label=None):
    f = getattr(owner, name, None)
    if f is None:  # the pipeline changed: trace what is there
        print(f"[trace-missing] {owner.__name__}.{name}", flush=True)
        return
    count = [0]

    @functools.wraps(f)
    def g(*a, **k):
        tag = label(a) if label else f"{name} #{count[0]}"
        count[0] += 1
        print(f"[trace] {tag} | {mem()}", flush=True)
        try:
            return f(*a, **k)
        finally:
            print(f"[trace] after {tag} | {mem()}", flush=True)
    setattr(owner, name, g)

wrap(data, 'load_model', lambda a: 'load model')
wrap(data, 'token_splits', lambda a: 'tokenise')
for n in ('source_fingerprint', 'capture_calls', 'save_rest'):
    wrap(pipeline, n, lambda a, n=n: n)
wrap(pipeline, 'collect_stats', None)
wrap(pipeline, '_solve_layer', lambda a: f"solve b{a[2]} {a[4]}")
wrap(pipeline, 'block_outputs', None)
wrap(pipeline, '_commit_block', lambda a: f"commit b{a[1]}")
_from = SLaBLinear.from_result.__func__
SLaBLinear.from_result = classmethod(
    lambda cls, res, **k: (print(f"[trace] SLaBLinear.from_result | {mem()}", flush=True),
                           _from(cls, res, **k))[1])
sys.exit(cli.main(sys.argv[1:]))
"""


def _event(chunk: str) -> str | None:
    """Phase name for a piece of the child's output (a tqdm update begins with \\r)."""
    if "[trace] " in chunk and " | " in chunk:  # may follow a tqdm update on the same line
        return chunk[chunk.index("[trace] ") + len("[trace] "):].split(" | ")[0]
    if chunk.startswith("Loading weights") and "100%" in chunk:
        return "model loaded"
    m = re.search(r"block (\d+) (\S+) \((\d+)/(\d+)\)", chunk)
    if m and "|" in chunk:
        return f"block {m.group(1)} {m.group(2)}"
    m = re.search(r"block\s+(\d+) \S+\s+\(\d+, \d+\)\s+ratio", chunk)  # --verbose line, after the commit
    if m:
        return f"block {m.group(1)} committed"
    if re.search(r"^slab r=.*\b0/\d+ \[", chunk):
        return "blocks start"
    if chunk.startswith("compressed "):
        return "done"
    return None


def run_measured(cmd: list[str], log_path: Path, interval: float = 0.1, trace: bool = False,
                 extra_env: dict | None = None) -> dict:
    """Run ``cmd``; its peak RSS (wait4), the polled /proc samples and time-stamped output events.

    Events are the first appearance of each progress label (tqdm repeats the last postfix when it
    advances) or, with ``trace``, the "[trace]" markers only.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        samples, events, seen, done = [], [], set(), threading.Event()

        def read():
            buf = b""
            while piece := proc.stdout.read1(65536):
                log.write(piece)
                buf += piece
                *parts, buf = re.split(rb"[\r\n]", buf)
                now = time.perf_counter() - t0
                for p in [*parts, buf]:  # tqdm ends each update with the next update's \r
                    text = p.decode("utf-8", "replace").strip()
                    ev = _event(text)
                    if ev is None or (trace and "[trace] " not in text and ev != "done"):
                        continue
                    if (events and events[-1][1] == ev) or (not trace and ev in seen):
                        continue
                    seen.add(ev)
                    events.append((now, ev))

        def poll():
            while not done.is_set():
                st = _status(proc.pid)
                if st:
                    samples.append((time.perf_counter() - t0, st))
                done.wait(interval)

        reader, poller = threading.Thread(target=read), threading.Thread(target=poll)
        reader.start()
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        reader.join()
        poller.join()
    return {"returncode": proc.returncode, "wall_seconds": wall, "ru_maxrss_bytes": usage.ru_maxrss * 1024,
            "samples": samples, "events": events}


def _phase(events: list, t: float) -> str:
    name = "start (imports, model load)"
    for te, ev in events:
        if te <= t:
            name = ev
    return name


def summarise(layers: int, ckpt_bytes: int, vocab: int, m: dict, out: Path, cmd: list[str]) -> dict:
    man = json.loads((out / "manifest.json").read_text())
    samples, events = m["samples"], m["events"]
    i_peak = max(range(len(samples)), key=lambda i: samples[i][1]["VmRSS"])
    t_peak, s_peak = samples[i_peak]
    peak = m["ru_maxrss_bytes"]
    solve = [0.0] * layers
    for e in man["layers"]:
        solve[e["block"]] += e["seconds"]
    starts = [t for t, ev in events if ev == "blocks start"]
    commits = [t for t, ev in events if ev.endswith("committed")]
    block_wall = [b - a for a, b in zip(starts[:1] + commits[:-1], commits, strict=False)] if starts else []

    def rss_at(name: str) -> int | None:
        t = next((t for t, ev in events if ev == name), None)
        if t is None:
            return None
        return max((s["VmRSS"] for ts, s in samples if ts <= t), default=None)

    def max_between(a: str, b: str) -> int | None:
        ta = next((t for t, ev in events if ev == a), None)
        tb = next((t for t, ev in events if ev == b), None)
        if ta is None or tb is None:
            return None
        return max((s["VmRSS"] for ts, s in samples if ta <= ts <= tb), default=None)

    step = max(1, len(samples) // 400)
    return {
        "layers": layers, "vocab_size": vocab, "command": " ".join(cmd),
        "checkpoint_bytes": ckpt_bytes, "peak_rss_bytes": peak,
        "peak_rss_polled_bytes": s_peak["VmRSS"], "peak_rss_anon_bytes": s_peak.get("RssAnon"),
        "peak_rss_file_bytes": s_peak.get("RssFile"), "peak_time_seconds": t_peak,
        "peak_phase": _phase(events, t_peak),
        "overhead_bytes": peak - ckpt_bytes, "target_bytes": ckpt_bytes + TARGET_OVERHEAD,
        "target_met": peak <= ckpt_bytes + TARGET_OVERHEAD,
        "rss_max_until_model_loaded_bytes": rss_at("model loaded"),
        "rss_max_until_blocks_start_bytes": rss_at("blocks start"),
        "rss_max_during_blocks_bytes": max_between("blocks start", "done"),
        "wall_seconds": m["wall_seconds"], "compress_seconds": man["compress_seconds"],
        "wall_seconds_to_blocks_start": starts[0] if starts else None,
        "block_wall_seconds": block_wall, "block_solve_seconds": solve,
        "seconds_per_block": man["compress_seconds"] / layers,
        "layer_seconds": [{"block": e["block"], "name": e["name"], "shape": e["shape"],
                           "seconds": e["seconds"], "relative_error": e["relative_error"]}
                          for e in man["layers"]],
        "sizes": man.get("sizes"),
        "events": [[round(t, 2), ev] for t, ev in events],
        "timeline": [[round(t, 2), s["VmRSS"], s.get("RssAnon"), s.get("RssFile")]
                     for t, s in samples[::step]],
    }


def phases(m: dict) -> list[dict]:
    """Per phase of a --trace run (marker to next marker): duration, VmRSS at its start, peaks."""
    ev = [(0.0, "start (imports)"), *m["events"], (m["wall_seconds"], "exit")]
    out = []
    for (ta, name), (tb, _) in itertools.pairwise(ev):
        inside = [s for t, s in m["samples"] if ta <= t <= tb]
        if not inside:
            continue
        out.append({"phase": name, "start": round(ta, 2), "seconds": round(tb - ta, 2),
                    "rss_start": inside[0]["VmRSS"], "rss_max": max(s["VmRSS"] for s in inside),
                    "anon_max": max(s.get("RssAnon", 0) for s in inside),
                    "file_max": max(s.get("RssFile", 0) for s in inside)})
    return out


def trace_table(rows: list[dict]) -> str:
    g = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    lines = ["| phase | start (s) | seconds | VmRSS at start (GiB) | max VmRSS | max RssAnon | max RssFile |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['start']:.1f} | {r['seconds']:.1f} | {g(r['rss_start'])} | "
              f"{g(r['rss_max'])} | {g(r['anon_max'])} | {g(r['file_max'])} |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- reporting
def machine() -> dict:
    import torch
    import transformers

    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"nproc": sh(["nproc"]), "free_g": sh(["free", "-g"]), "cpu": cpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__}


def code_version() -> dict:
    """The commit measured and the pipeline files that differed from it (others edit llm/ meanwhile)."""
    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    dirty = git("status", "--short", "--", "llm")
    return {"commit": git("rev-parse", "HEAD"), "llm_uncommitted": dirty.splitlines() if dirty else []}


def table(rows: list[dict]) -> str:
    g = lambda b: f"{b / GIB:.2f}"  # noqa: E731
    lines = ["| L | checkpoint bf16 (GiB) | peak RSS (GiB) | peak − checkpoint (GiB) | target ≤ ckpt + 2.5 "
             "| peak during | total wall (s) | compress (s) | s / block | solve s / block |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        solve = sum(r["block_solve_seconds"]) / r["layers"]
        met = "met" if r["target_met"] else "NOT met"
        lines.append(f"| {r['layers']} | {g(r['checkpoint_bytes'])} | {g(r['peak_rss_bytes'])} | "
                     f"{g(r['overhead_bytes'])} | {met} | {r['peak_phase']} | {r['wall_seconds']:.0f} | "
                     f"{r['compress_seconds']:.0f} | {r['seconds_per_block']:.1f} | {solve:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), width_ratios=(3, 2))
    for r in rows:
        t = [p[0] for p in r["timeline"]]
        line, = ax.plot(t, [p[1] / GIB for p in r["timeline"]], lw=0.9, label=f"L={r['layers']}")
        ax.axhline(r["target_bytes"] / GIB, ls="-.", lw=0.8, color=line.get_color())
    ax.set_xlabel("seconds since start of `slabopt compress`")
    ax.set_ylabel("VmRSS (GiB)")
    ax.set_title("VmRSS (dash-dot: target = checkpoint + 2.5 GiB)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    big = max(rows, key=lambda r: r["layers"])
    t = [p[0] for p in big["timeline"]]
    anon = [(p[2] or 0) / GIB for p in big["timeline"]]
    file = [(p[3] or 0) / GIB for p in big["timeline"]]
    ax2.stackplot(t, file, anon, labels=["RssFile (mapped checkpoint pages)", "RssAnon"], alpha=0.7)
    ax2.axhline(big["checkpoint_bytes"] / GIB, ls="--", lw=0.8, color="k", label="checkpoint size")
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("GiB")
    ax2.set_title(f"L={big['layers']}: file-backed + anonymous", fontsize=10)
    ax2.legend(fontsize=8, loc="upper left")
    ax2.grid(alpha=0.3)
    told = rows[0].get("command", "").split()
    threads = told[told.index("--threads") + 1] if "--threads" in told else "torch's default"
    fig.suptitle(f"slabopt compress (its defaults), random 7B-shaped Llama in bf16, {threads} CPU thread(s)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------------------------ main
TOLD = ("--calib-tokens", "--seqlen", "--max-iter", "--threads")  # passed to compress only when given


def told_options(args) -> list[str]:
    """The options of :data:`TOLD` given to the benchmark, as compress takes them."""
    values = [(flag, getattr(args, flag[2:].replace("-", "_"))) for flag in TOLD]
    return [x for flag, value in values if value is not None for x in (flag, str(value))]


def compress_args(args) -> list[str]:
    """The ``slabopt compress`` options the benchmark was told (everything else: compress's defaults)."""
    return told_options(args) + shlex.split(args.compress_args)


def compress_cmd(model: Path, out: Path, args, trace: bool = False) -> list[str]:
    """The measured command: compress ``model`` into ``out`` (bf16, CPU) with :func:`compress_args`."""
    head = [sys.executable, "-c", TRACE] if trace else [sys.executable, "-m", "slabopt.llm"]
    return [*head, "compress", "--model", str(model), "--dtype", "bfloat16", "--device", "cpu",
            *compress_args(args), "--out", str(out), "--verbose"]


def parser() -> argparse.ArgumentParser:
    """The benchmark's options (``build`` and ``probe`` are the internal subcommands)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    b = sub.add_parser("build", help="(internal) write the random checkpoint")
    b.add_argument("--layers", type=int, required=True)
    b.add_argument("--dir", type=Path, required=True)
    sub.add_parser("probe", help="(internal) memory of one 11008×4096 layer's steps, as JSON")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/slabopt_memory_7b"))
    for flag in TOLD:
        p.add_argument(flag, type=int, default=None, help=f"compress's {flag} (default: compress's own)")
    p.add_argument("--compress-args", default="", metavar="ARGS",
                   help="further `slabopt compress` options, e.g. \"--sparse-bits none --positions index\" "
                        "(default: none, i.e. compress's defaults)")
    p.add_argument("--trace", type=int, metavar="L", default=None,
                   help="also run L layers once more with per-phase memory markers (diagnosis)")
    p.add_argument("--probe", action="store_true",
                   help="also measure one 11008×4096 layer's steps in a fresh process (diagnosis)")
    p.add_argument("--malloc-threshold", type=int, metavar="BYTES", default=None,
                   help="run compress with glibc's MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ "
                        "set to BYTES (every larger block is its own mapping, returned when freed)")
    p.add_argument("--keep", action="store_true", help="keep the model folders and outputs")
    p.add_argument("--json", type=Path, default=OUT_JSON)
    p.add_argument("--png", type=Path, default=OUT_PNG)
    return p


def run_rows(args, malloc_env: dict) -> list[dict]:
    """One measured compress per L of ``--layers``."""
    rows = []
    for layers in args.layers:
        model, out = args.workdir / f"llama7b_L{layers}", args.workdir / f"out_L{layers}"
        ckpt, vocab = ensure_model(layers, model)
        shutil.rmtree(out, ignore_errors=True)
        cmd = compress_cmd(model, out, args)
        print(f"L={layers}: checkpoint {ckpt / GIB:.2f} GiB; running {' '.join(cmd)}", flush=True)
        code = code_version()
        m = run_measured(cmd, args.workdir / f"compress_L{layers}.log", extra_env=malloc_env)
        if m["returncode"] != 0:
            tail = (args.workdir / f"compress_L{layers}.log").read_text(errors="replace")[-3000:]
            sys.exit(f"compress failed (exit {m['returncode']}) for L={layers}:\n{tail}")
        shutil.copyfile(out / "layers.log", args.workdir / f"layers_L{layers}.log")
        row = summarise(layers, ckpt, vocab, m, out, cmd)
        row["code_at_start"], row["code_at_end"] = code, code_version()
        rows.append(row)
        print(f"L={layers}: peak RSS {row['peak_rss_bytes'] / GIB:.2f} GiB (checkpoint "
              f"{ckpt / GIB:.2f} GiB, overhead {row['overhead_bytes'] / GIB:.2f} GiB, during "
              f"{row['peak_phase']!r}), wall {row['wall_seconds']:.0f}s", flush=True)
        if not args.keep and layers != args.trace:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(model, ignore_errors=True)
    return rows


def run_trace(args, malloc_env: dict) -> dict:
    """The ``--trace L`` run: the same compress with phase markers."""
    model, out = args.workdir / f"llama7b_L{args.trace}", args.workdir / f"trace_L{args.trace}"
    ckpt, _ = ensure_model(args.trace, model)
    shutil.rmtree(out, ignore_errors=True)
    cmd = compress_cmd(model, out, args, trace=True)
    print(f"trace L={args.trace}: running the same compress with phase markers", flush=True)
    code = code_version()
    m = run_measured(cmd, args.workdir / f"trace_L{args.trace}.log", trace=True, extra_env=malloc_env)
    if m["returncode"] != 0:
        sys.exit(f"traced compress failed (exit {m['returncode']}); see {args.workdir}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(model, ignore_errors=True)
    return {"layers": args.trace, "code_at_start": code, "checkpoint_bytes": ckpt,
            "peak_rss_bytes": m["ru_maxrss_bytes"], "wall_seconds": m["wall_seconds"], "phases": phases(m)}


def report(rows: list[dict], trace: dict | None, layer_probe: dict | None) -> None:
    """Print the table, the phases of a traced run and the layer probe."""
    print(table(rows))
    if trace:
        peak = trace["peak_rss_bytes"] / GIB
        print(f"\nphases of the traced run, L={trace['layers']} (peak {peak:.2f} GiB):")
        print(trace_table(trace["phases"]))
    if layer_probe:
        print("\none 11008×4096 layer (GiB):", json.dumps({k: round(v / GIB, 3) for k, v in {
            "solve peak": layer_probe["solve"]["peak"],
            "from_result peak": layer_probe["from_result"]["peak"],
            "cached forward peak": layer_probe["cached_forward"]["peak"],
            "module in memory": layer_probe["module_bytes"], "module stored": layer_probe["stored_bytes"],
            "dense bf16": layer_probe["dense_bf16_bytes"]}.items()}))


def main(argv: list[str] | None = None) -> int:
    """Measure the runs, write the JSON and the plot, print the tables."""
    args = parser().parse_args(argv)
    if args.cmd == "build":
        build(args.layers, args.dir)
        return 0
    if args.cmd == "probe":
        print(json.dumps(probe(compress_args(args))))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    malloc_env = {} if args.malloc_threshold is None else {
        name: str(args.malloc_threshold) for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    rows = run_rows(args, malloc_env)
    trace = None if args.trace is None else run_trace(args, malloc_env)
    layer_probe = None
    if args.probe:
        cmd = [sys.executable, __file__, *told_options(args), "--compress-args", args.compress_args, "probe"]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        layer_probe = json.loads(r.stdout.strip().splitlines()[-1])
    result = {"target": "peak RSS <= checkpoint bf16 bytes + 2.5 GiB", "shapes": SHAPES,
              "settings": {"compress_args": compress_args(args), "child_env": malloc_env},
              "machine": machine(), "rows": rows, "trace": trace, "layer_probe": layer_probe}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    if rows:
        plot(rows, args.png)
    report(rows, trace, layer_probe)
    print(f"wrote {args.json}" + (f" and {args.png}" if rows else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
