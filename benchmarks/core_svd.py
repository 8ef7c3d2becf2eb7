"""Randomized vs exact SVD in the low-rank step, side by side in one process, one thread.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python -m benchmarks.core_svd [--quick] [--out FILE]

For every (shape, rank) it runs ``slabopt.solve(..., ratio=0.5, max_iter=20, tol=0)`` with
``svd="randomized"`` and with ``svd="exact"`` (alternately, ``--repeats`` times, median wall time)
and prints a Markdown table with times, the speed ratio and the objective ratio. Where an exact run
would take too long (``--exact-iters``), the exact path runs fewer iterations and its time is
scaled per iteration, and the objective ratio compares both paths after that same number of
iterations; the table says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

import slabopt

from ._matrices import layer_problem

CASES = [
    ((1024, 1024), 1),
    ((1024, 1024), 64),
    ((4096, 4096), 1),
    ((4096, 4096), 64),
    ((4096, 11008), 1),
    ((4096, 11008), 64),
]


def run(shape, rank, svd, iters, seed=0):
    W, d = layer_problem(*shape, seed=seed)
    t = time.perf_counter()
    res = slabopt.solve(W, col_norms=d, ratio=0.5, rank=rank, svd=svd, max_iter=iters, tol=0)
    return time.perf_counter() - t, res.objective, res.relative_error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024² cases only")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--exact-iters",
        type=int,
        default=20,
        help="iterations of the exact path on shapes with min side > 1024",
    )
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    ap.add_argument("--only", default=None, help="one case, e.g. 4096x4096:64")
    args = ap.parse_args()
    rows = []
    for shape, rank in CASES:
        if args.quick and shape[0] > 1024:
            continue
        if args.only and args.only != f"{shape[0]}x{shape[1]}:{rank}":
            continue
        exact_iters = 20 if max(shape) <= 1024 else args.exact_iters
        fast, exact = [], []
        for _ in range(args.repeats):
            fast.append(run(shape, rank, "randomized", 20))
            exact.append(run(shape, rank, "exact", exact_iters))
        if exact_iters < 20:  # objective comparison at equal iteration counts
            same = run(shape, rank, "randomized", exact_iters)
        else:
            same = fast[0]
        tf = statistics.median(r[0] for r in fast)
        te = statistics.median(r[0] for r in exact) * 20 / exact_iters
        row = dict(
            shape=shape,
            rank=rank,
            t_randomized=tf,
            t_exact=te,
            exact_iters=exact_iters,
            speedup=te / tf,
            rel_err_randomized=fast[0][2],
            rel_err_exact=exact[0][2],
            objective_ratio=same[1] / exact[0][1],
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, 1 thread, "
        f"numpy {np.__version__}, slabopt {slabopt.__version__}\n"
    )
    print("| shape | rank | randomized (s, 20 it) | exact (s, 20 it) | speed-up | f_rand / f_exact |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        note = "" if r["exact_iters"] == 20 else f" (†{r['exact_iters']} it ×{20 // r['exact_iters']})"
        ratio = f"{r['objective_ratio']:.5f}" + (
            "" if r["exact_iters"] == 20 else f" (at {r['exact_iters']} it)"
        )
        print(
            f"| {r['shape'][0]}×{r['shape'][1]} | {r['rank']} | {r['t_randomized']:.2f} | "
            f"{r['t_exact']:.1f}{note} | {r['speedup']:.1f}× | {ratio} |"
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
