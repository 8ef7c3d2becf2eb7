"""Whole salient input columns as the mask of S (PTQ1.61's structure), against slab_obs's per-row mask.

A prototype, not a shipped option: ``slab_obs``'s mask selection (``_select_mask``) is replaced for
the run by one that keeps, in each block, the k_b *columns* of largest summed OBS score
Σ_i (|w_ij| − l_ij)² / Hinv_jj², so that every row keeps the same columns and the positions are a
list of k column indices (k·⌈log₂ n⌉ bits per layer, ≈ 0 per weight). The solve runs with a bitmask
budget at B + 1 bits per weight (the bitmask costs exactly 1 bit per weight, so the parts other
than the positions get the B bits a column list leaves them) and the bits are then counted with
the column list in place of the bitmask. Same 21 SmolLM2 layers and held-out error as
``benchmarks/lowbit_layers.py``; the per-row results to compare with are in its table.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.lowbit_columns 1.5 2.0 2.5
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

import slabopt
import slabopt.solvers.slab_obs as slab_obs

from .lowbit_layers import heldout_error, load


def column_mask(W1: np.ndarray, L1: np.ndarray, hdiag: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The counts[0] columns of largest summed OBS score, kept in every row (counts all equal)."""
    k = int(counts[0])
    score = ((np.abs(W1) - L1) ** 2 / hdiag**2).sum(axis=0)
    mask = np.zeros(W1.shape, dtype=bool)
    mask[:, np.argsort(-score, kind="stable")[:k]] = True
    return mask


def point(bits: float, q: int) -> tuple[float, float, float]:
    """(bits per weight with the column list, geometric-mean held-out error, seconds)."""
    layers = load()
    errs, total, t0 = [], 0, time.perf_counter()
    for W, X, T in layers.values():
        m, n = W.shape
        res = slabopt.solve(W.astype(np.float64), X.astype(np.float64), method="slab_obs", bits=bits + 1,
                            rank=1, sparse_bits=q, positions="bitmask", spread="adaptive")
        total += res.bits - m * n + (res.sparse.nnz // m) * math.ceil(math.log2(n))
        errs.append(heldout_error(W, res.reconstruct(), T))
    weights = sum(W.size for W, _, _ in layers.values())
    return total / weights, math.exp(np.mean(np.log(errs))), time.perf_counter() - t0


def main(sizes: list[float]) -> None:
    original = slab_obs._select_mask
    slab_obs._select_mask = column_mask
    try:
        for bits in sizes:
            for q in (2, 3, 4):
                on_disk, err, secs = point(bits, q)
                print(f"columns {bits} bits q{q}: {on_disk:.3f} bits on disk, error {err:.4e} ({secs:.0f} s)",
                      flush=True)
    finally:
        slab_obs._select_mask = original


if __name__ == "__main__":
    main([float(b) for b in sys.argv[1:]] or [1.5, 2.0, 2.5])
