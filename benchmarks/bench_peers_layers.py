"""Every solver on real SmolLM2-135M layers with their real calibration inputs (report §2).

For each layer of ``benchmarks.peers_layers`` (every linear-layer type of blocks 0 and 15) and each
ratio in 0.3, 0.5, 0.6, 0.7, 0.8, runs every method through ``slabopt.solve`` at that ratio and
records f, g (both also relative to Wanda's at the same ratio), the achieved ratio and the wall
time (one thread). ``rpca`` (no budget) runs once per layer; its result is projected to each
ratio's (r, k) budget. Writes ``benchmarks/results/layers.json``.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_peers_layers [--blocks 0 15] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import slabopt
from benchmarks.peers_layers import load
from slabopt.solvers.rpca import pcp_ialm

OUT = Path(__file__).resolve().parent / "results" / "layers.json"
RATIOS = (0.3, 0.5, 0.6, 0.7, 0.8)
# (label, method, options); rank 1 for the SLaB family (the paper's setting), 16 for OATS/GoDec
METHODS = [
    ("magnitude", "magnitude", {}),
    ("wanda", "wanda", {}),
    ("sparsegpt", "sparsegpt", {}),
    ("svd (weighted)", "svd", {"rank": 0, "weighted": True}),
    ("oats r=16", "oats", {"rank": 16}),
    ("godec r=16", "godec", {"rank": 16}),
    ("alternating r=1", "alternating", {"rank": 1}),
    ("two_level", "two_level", {"rank": 0}),
    ("slab_offset r=1", "slab_offset", {"rank": 1}),
    ("slab_init r=1", "slab_init", {"rank": 1}),
    ("admm r=1", "admm", {"rank": 1, "max_iter": 20}),
]
HISTORY_RATIO = 0.5


def rpca_projected(W, X, ratio, rank, pcp):
    """f and g of the PCP result (of W·D) projected to the (rank, k) budget of ``ratio``."""
    P, s, Q, E, d = pcp
    bud = slabopt.budget(W.shape, ratio, rank, components=("sparse", "lowrank"))
    r = min(rank, len(s))
    L = (P[:, :r] * s[:r]) @ Q[:, :r].T
    k = bud.nnz_per_row
    idx = np.argsort(-np.abs(E), axis=1)[:, :k]
    S = np.zeros_like(E)
    np.put_along_axis(S, idx, np.take_along_axis(E, idx, 1), 1)
    inv = np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)
    return slabopt.objective(W, (L + S) * inv, X)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, nargs="*", default=None)
    ap.add_argument("--quick", action="store_true", help="one layer, two ratios (a smoke run)")
    ap.add_argument("--out", type=Path, default=OUT, help="result file (default: %(default)s)")
    args = ap.parse_args(argv)
    out = args.out
    layers = load()
    names = [n for n in layers if args.blocks is None
             or int(n.split(".")[2]) in args.blocks]
    ratios = RATIOS
    if args.quick:
        names, ratios = names[:1], (0.5, 0.7)
    rows, histories = [], {}
    for name in names:
        W, X = (a.astype(np.float64) for a in layers[name])
        d = np.linalg.norm(X, axis=0)
        t0 = time.perf_counter()
        P, s, Q, E, n_it, _ = pcp_ialm(W * d)
        t_rpca = time.perf_counter() - t0
        pcp = (P, s, Q, E, d)
        rank_reached, nnz_reached = len(s), int(np.count_nonzero(E))
        for ratio in ratios:
            res_by = {}
            for label, method, opts in METHODS:
                opts = dict(opts)
                rank = opts.pop("rank", 1)
                t0 = time.perf_counter()
                res = slabopt.solve(W, X, ratio=ratio, rank=rank, method=method, **opts)
                dt = time.perf_counter() - t0
                res_by[label] = dict(f=res.objective, g=res.objective_full, time=dt,
                                     ratio=res.ratio, rank=res.rank, nnz=res.sparse.nnz,
                                     n_iter=res.n_iter)
                if ratio == HISTORY_RATIO and name == names[0]:
                    histories[label] = res.history
                    if method == "admm":
                        histories["admm primal"] = res.info["primal"]
                        histories["admm dual"] = res.info["dual"]
            ob = rpca_projected(W, X, ratio, 16, pcp)
            res_by["rpca→budget r=16"] = dict(f=ob.diagonal, g=ob.full, time=t_rpca, ratio=ratio,
                                              rank=min(16, rank_reached), nnz=None, n_iter=n_it)
            ref = res_by["wanda"]
            for label, v in res_by.items():
                rows.append(dict(layer=name, shape=list(W.shape), requested=ratio, method=label,
                                 f_rel_wanda=v["f"] / ref["f"], g_rel_wanda=v["g"] / ref["g"],
                                 f_rel=v["f"] / float(np.sum((W * d) ** 2)), **v))
            print(name, ratio, " ".join(f"{k}:{v['f'] / ref['f']:.3f}/{v['g'] / ref['g']:.3f}"
                                        for k, v in res_by.items()), flush=True)
        rows.append(dict(layer=name, method="rpca (reached)", rank=rank_reached,
                         nnz=nnz_reached, time=t_rpca, n_iter=n_it,
                         ratio=1 - (16 * nnz_reached + 16 * rank_reached * sum(W.shape))
                         / (16 * W.size)))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(
            command="OMP_NUM_THREADS=1 python -m benchmarks.bench_peers_layers"
                    + (f" --blocks {' '.join(map(str, args.blocks))}" if args.blocks else "")
                    + (f" --out {args.out}" if args.out != OUT else ""),
            threads=os.environ.get("OMP_NUM_THREADS"), rows=rows, histories=histories,
            history_layer=names[0], history_ratio=HISTORY_RATIO), indent=1))


if __name__ == "__main__":
    main()
