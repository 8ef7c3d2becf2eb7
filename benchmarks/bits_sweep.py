"""Perplexity against real bits per weight on disk, for quantisers and pruners alike.

Every point is one ``slabopt compress`` of the shipped SmolLM2-135M followed by ``slabopt eval``
of the saved folder, each in a fresh process, one thread. The x-axis is what the folder's linear
layers take on disk, in bits per weight: 16 · (1 − ``linear_disk_ratio`` of the manifest), so the
bitmask of a sparse part, the signs, the factors, scales and zero points all count.

How a method reaches a target of b bits per weight:

- ``rtn`` / ``gptq``: ``bits`` = b per output channel (scale, and zero point for gptq, in 16 bits
  per row: ≈ b + 32/n), or ``bits`` with groups (``bits`` + 32/G with a zero point);
- pruning and S + L⊙B methods: the budget counts values, factors and signs but not the positions of
  S (ι = 0), which cost a bitmask of 1 bit per weight on disk; so the ratio asked for is
  1 − (b − 1)/16, and the achieved bits on disk are reported, not assumed.

Run (from the repository root; results go to ``benchmarks/results/bits_sweep.json``, skipping
points already there)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bits_sweep.py run [--only METHOD ...]
    .venv/bin/python benchmarks/bits_sweep.py report      # Markdown table + docs/bits_sweep.png

Settings: calibration 4 × 1024 tokens of the shipped training split (seed 0), perplexity on the
first 4 × 1024 tokens of the test split, rank 1, 20 iterations, values in 16 bits.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "benchmarks" / "results" / "bits_sweep.json"
OUT_PNG = REPO / "docs" / "bits_sweep.png"
COMMON = ["--calib-tokens", "4096", "--seqlen", "1024", "--seed", "0", "--rank", "1", "--threads", "1"]
EVAL = ["--tokens", "4096", "--seqlen", "1024", "--threads", "1", "--json"]
TARGET_BITS = (8, 6, 5, 4, 3, 2.5, 2)
PRUNERS = ("wanda", "sparsegpt", "slab", "admm")


def quant_points() -> list[dict]:
    """rtn and gptq per output channel at 8…2 bits, and with groups of 128 / 64 where the field uses them."""
    pts = []
    for method in ("rtn", "gptq"):
        for bits in (8, 6, 5, 4, 3, 2):
            pts.append({"method": method, "label": f"{method} int{bits}", "options": {"bits": bits,
                                                                                 "group_size": None}})
        for bits, group in ((4, 128), (3, 128), (2, 128), (2, 64)):
            pts.append({"method": method, "label": f"{method} int{bits} g{group}",
                        "options": {"bits": bits, "group_size": group}})
    return pts


def prune_points(methods=PRUNERS) -> list[dict]:
    """Each pruning / S + L⊙B method at the ratio whose budget plus the bitmask is b bits per weight,
    and L⊙B alone at 2 bits (rank 8: B's 1 bit plus U, V; the budget, counting the bitmask, leaves
    no room for S)."""
    pts = [{"method": m, "label": f"{m} {b} bits", "ratio": round(1 - (b - 1) / 16, 6), "options": {}}
           for b in TARGET_BITS for m in methods]
    pts.append({"method": "slab", "label": "slab L⊙B rank 8, 2 bits", "ratio": 0.875, "options": {},
                "args": ["--rank", "8", "--positions", "bitmask"]})
    return pts


CODED = ((8, 8), (8, 7), (8, 6), (6, 6), (6, 5), (6, 4), (5, 4), (5, 3), (4, 3), (4, 2), (3, 2), (2.5, 2))


def coded_points() -> list[dict]:
    """S + L⊙B (and wanda, i.e. pruning plus codes, without L⊙B) with the kept values of S as q-bit
    codes (``--sparse-bits q``) and ``--positions bitmask``: the ratio asked for is then the ratio on
    disk, 1 − b/16, for each (b bits per weight, q) in ``CODED``."""
    pts = []
    for b, q in CODED:
        for m in ("slab", "wanda"):
            pts.append({"method": m, "label": f"{m} q{q} {b} bits", "ratio": round(1 - b / 16, 6),
                        "options": {}, "args": ["--positions", "bitmask", "--sparse-bits", str(q)]})
    for b, q in ((6, 5), (5, 4)):  # OWL's allocation across blocks at the same total
        args = ["--positions", "bitmask", "--sparse-bits", str(q), "--allocation", "owl"]
        pts.append({"method": "slab", "label": f"slab q{q} {b} bits, OWL allocation",
                    "ratio": round(1 - b / 16, 6), "options": {}, "args": args})
    for b in (8, 6, 5):  # the default of slabopt compress: q chosen per layer
        pts.append({"method": "slab", "label": f"slab qauto {b} bits", "ratio": round(1 - b / 16, 6),
                    "options": {}, "args": ["--positions", "bitmask", "--sparse-bits", "auto"]})
    pts.append({"method": "slab", "label": "slab q5 6 bits, 16k calibration", "ratio": 0.625, "options": {},
                "args": ["--positions", "bitmask", "--sparse-bits", "5", "--calib-tokens", "16384"]})
    for b, q in ((6, 5), (8, 7), (5, 4)):
        args = ["--positions", "bitmask", "--sparse-bits", str(q), "--refine-steps", "20"]
        pts.append({"method": "slab", "label": f"slab q{q} {b} bits, refined 20 steps",
                    "ratio": round(1 - b / 16, 6), "options": {}, "args": args})
    return pts


def key(p: dict) -> str:
    return p["label"]


FIRST = ("slab 3 bits", "gptq int3 g128", "rtn int3 g128", "slab 2.5 bits", "gptq int2 g64", "rtn int2 g64",
         "slab 2 bits", "gptq int2 g128", "gptq int3", "slab L⊙B rank 8, 2 bits", "slab 8 bits", "gptq int8",
         "wanda 8 bits", "sparsegpt 8 bits", "slab 4 bits", "gptq int4 g128", "rtn int4 g128", "wanda 3 bits",
         "rtn int3", "admm 8 bits", "gptq int4", "slab 6 bits", "gptq int6", "rtn int6", "slab 5 bits",
         "gptq int5", "admm 3 bits")


def priority(p: dict) -> tuple:
    """The points that decide the regime claims first (≤ 3 bits and 8 bits), then the rest by bits."""
    label = key(p)
    return (FIRST.index(label) if label in FIRST else len(FIRST), -p.get("ratio", 0))


def run_point(p: dict, work: Path) -> dict:
    out = work / re.sub(r"[^A-Za-z0-9.]+", "_", key(p))
    cmd = [sys.executable, "-m", "slabopt.llm", "compress", "--method", p["method"], "--out", str(out),
           *COMMON]
    if "ratio" in p:
        cmd += ["--ratio", str(p["ratio"])]
    cmd += p.get("args", [])  # after COMMON: a point's own --rank wins
    for k, v in p["options"].items():
        cmd += ["--option", f"{k}={'none' if v is None else v}"]
    if out.exists():
        cmd += ["--resume"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    compress_s = time.perf_counter() - t0
    ev = subprocess.run([sys.executable, "-m", "slabopt.llm", "eval", str(out), *EVAL], check=True, cwd=REPO,
                        capture_output=True, text=True)
    man = json.loads((out / "manifest.json").read_text())
    s = man["sizes"]
    return {**p, "perplexity": json.loads(ev.stdout)["perplexity"],
            "bits_per_weight": 16 * (1 - s["linear_disk_ratio"]), "disk_bytes": s["linear_bytes_on_disk"],
            "budget_ratio": s["linear_budget_ratio"], "compress_seconds": man["compress_seconds"],
            "wall_seconds": compress_s, "command": " ".join(cmd[2:])}


def run(args) -> None:
    done = json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {"points": []}
    have = {key(p) for p in done["points"]}
    if "dense" not in have and not args.only:
        ev = subprocess.run([sys.executable, "-m", "slabopt.llm", "eval", "dense", *EVAL], check=True,
                            cwd=REPO, capture_output=True, text=True)
        done["points"].append({"method": "dense", "label": "dense", "bits_per_weight": 16.0,
                               "perplexity": json.loads(ev.stdout)["perplexity"]})
    todo = [p for p in prune_points() + quant_points() + coded_points() if key(p) not in have
            and (not args.only or p["method"] in args.only) and (not args.labels or key(p) in args.labels)]
    todo.sort(key=priority)
    for p in todo:
        print(f"{time.strftime('%H:%M:%S')} {key(p)}", flush=True)
        try:
            done["points"].append(run_point(p, Path(args.work)))
        except subprocess.CalledProcessError as exc:
            why = [ln for ln in (exc.stderr or "").splitlines() if "error" in ln.lower()] or [str(exc)]
            print(f"  failed: {why[-1].strip()[-300:]}", flush=True)
            continue
        print(f"  perplexity {done['points'][-1]['perplexity']:.3f} at "
              f"{done['points'][-1]['bits_per_weight']:.3f} bits/weight", flush=True)
        OUT_JSON.write_text(json.dumps(done, indent=1))
    OUT_JSON.write_text(json.dumps(done, indent=1))


def series(p: dict) -> str:
    """The plot line of a point: its method, with "q-bit S" for coded sparse values (points with
    more calibration on their own)."""
    args = p.get("args", [])
    if "--allocation" in args:
        return f"{p['method']}, q-bit S, OWL allocation"
    if "--refine-steps" in args:
        return f"{p['method']}, q-bit S, refined {args[args.index('--refine-steps') + 1]} steps"
    if "--calib-tokens" in args:
        return f"{p['method']}, q-bit S, {args[args.index('--calib-tokens') + 1]} calibration tokens"
    return p["method"] + (", q-bit S (best q)" if "--sparse-bits" in args else "")


def best_per_target(mine: list[dict]) -> list[dict]:
    """For coded points: the lowest perplexity among the q tried at each target size."""
    best: dict[str, dict] = {}
    for p in mine:
        target = p["label"].rsplit(" ", 2)[-2]
        if target not in best or p["perplexity"] < best[target]["perplexity"]:
            best[target] = p
    return list(best.values())


def report(_args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = json.loads(OUT_JSON.read_text())["points"]
    dense = next(p["perplexity"] for p in pts if p["method"] == "dense")
    print("| method | setting | bits per weight on disk | perplexity | × dense |")
    print("|---|---|---|---|---|")
    for p in sorted(pts, key=lambda p: (p["method"], -p["bits_per_weight"])):
        print(f"| {p['method']} | {p['label']} | {p['bits_per_weight']:.3f} | {p['perplexity']:.3f} | "
              f"{p['perplexity'] / dense:.2f} |")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, zoom in zip(axes, (False, True), strict=True):
        for name in sorted({series(p) for p in pts} - {"dense"}):
            mine = [p for p in pts if series(p) == name]
            mine = best_per_target(mine) if "best q" in name else mine
            mine = sorted(mine, key=lambda p: p["bits_per_weight"])
            style = "o-" if "q-bit" not in name else ("s--" if "best q" in name else "D")
            ax.plot([p["bits_per_weight"] for p in mine], [p["perplexity"] for p in mine], style, label=name,
                    ms=4 if style != "D" else 6)
        ax.axhline(dense, color="k", ls=":", label=f"dense fp16 ({dense:.2f})")
        ax.set_yscale("log")
        ax.set_xlabel("bits per weight on disk (linear layers, all metadata counted)")
        ax.grid(alpha=0.3, which="both")
        if zoom:
            ax.set_xlim(4.8, 8.3)
            ax.set_ylim(11, 30)
            ax.set_title("zoom: 5 to 8 bits")
        else:
            ax.set_ylabel("perplexity (first 4 × 1024 test tokens)")
            ax.set_title("SmolLM2-135M: perplexity against real size")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT_PNG, dpi=120)
    print(f"\nplot: {OUT_PNG.relative_to(REPO)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="compress and evaluate the points not yet in the results file")
    r.add_argument("--only", nargs="*", default=None, help="methods to run (default: all)")
    r.add_argument("--labels", nargs="*", default=None, help="points to run, by label (default: all)")
    r.add_argument("--work", default="/tmp/slabopt_bits_sweep", help="folder for the compressed models")
    sub.add_parser("report", help="print the table and write the plot")
    args = ap.parse_args()
    {"run": run, "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
