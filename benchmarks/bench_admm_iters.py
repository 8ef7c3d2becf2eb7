"""How much more ADMM iterations and the start point buy on the full objective g.

On four real SmolLM2-135M layers (``benchmarks.peers_layers``) at ratio 0.5, rank 1, runs
``admm`` with ``max_iter`` (ADMM iterations; ``admm_iter`` in the rows) in 20 (the setting of
``bench_peers_layers``) and 60 (the solver default), each from the ``alternating`` solution and
from zero, and records g relative to Wanda's, f relative to Wanda's, iterations and wall time (one
thread). Writes
``benchmarks/results/admm_iters.json``.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_admm_iters
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

import slabopt
from benchmarks.peers_layers import load

OUT = Path(__file__).resolve().parent / "results" / "admm_iters.json"
LAYERS = ("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.o_proj",
          "model.layers.15.self_attn.q_proj", "model.layers.15.mlp.down_proj")
RATIO, RANK = 0.5, 1
SETTINGS = [(20, "alternating"), (60, "alternating"), (20, "zero"), (60, "zero")]


def main():
    layers = load()
    rows = []
    for name in LAYERS:
        W, X = (a.astype(np.float64) for a in layers[name])
        ref = slabopt.solve(W, X, ratio=RATIO, rank=RANK, method="wanda")
        alt = slabopt.solve(W, X, ratio=RATIO, rank=RANK, method="alternating")
        rows.append(dict(layer=name, method="alternating", f_rel_wanda=alt.objective / ref.objective,
                         g_rel_wanda=alt.objective_full / ref.objective_full))
        for iters, init in SETTINGS:
            t0 = time.perf_counter()
            res = slabopt.solve(W, X, ratio=RATIO, rank=RANK, method="admm", max_iter=iters,
                                init=init)
            dt = time.perf_counter() - t0
            rows.append(dict(layer=name, method="admm", max_iter=iters, init=init,
                             n_iter=res.n_iter, time=dt,
                             f_rel_wanda=res.objective / ref.objective,
                             g_rel_wanda=res.objective_full / ref.objective_full))
            print(json.dumps(rows[-1]), flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(dict(command="OMP_NUM_THREADS=1 python -m benchmarks.bench_admm_iters",
                                   threads=os.environ.get("OMP_NUM_THREADS"), ratio=RATIO,
                                   rank=RANK, rows=rows), indent=1))


if __name__ == "__main__":
    main()
