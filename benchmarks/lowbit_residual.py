"""A second sign plane on the salient input columns (BiLLM's residual binarization) inside slab_obs,
against slab_obs alone at the same bits on disk.

A prototype, not a shipped option. On the f·n input columns of largest BiLLM saliency
Σ_i w_ij² / Hinv_jj², the grid of an entry becomes l·b₁ + a_i·b₂ (a_i one scale per row for those
columns, fitted once on W as the d_j²-weighted mean of |w − l·sign w| there; b₁ = sign w and
b₂ = sign(w − l·b₁), the nearest of the four levels ±l ± a_i when a_i < l), S then codes what is
left; everything else is slab_obs's sweep. The plane costs f·m·n sign bits, 16 bits per row for a
and 16 per salient column for its index, which the solve gives up: it runs at the budget
B − (plane bits)/(m·n). Both arms run without the slack fill and the scale refit (which do not
know of the plane), so the comparison is the plane against the bits it takes from S. Same 21
SmolLM2 layers and held-out error as ``benchmarks/lowbit_layers.py``.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.lowbit_residual 2.0 2.5 3.0
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

import slabopt
import slabopt.solvers.slab_obs as slab_obs

from .lowbit_layers import heldout_error, load

FRACTIONS = (0.0, 0.05, 0.1, 0.2)


def salient_columns(W: np.ndarray, G: np.ndarray, count: int, damp: float = 0.01) -> np.ndarray:
    """The ``count`` columns of largest Σ_i w_ij² / Hinv_jj² (Hinv the upper Cholesky factor of
    (G + λ·mean diag G·I)⁻¹, as GPTQ and BiLLM compute it)."""
    n = G.shape[0]
    H = G + damp * np.mean(np.diag(G)) * np.eye(n)
    Hinv = np.linalg.cholesky(np.linalg.inv(H)[::-1, ::-1])[::-1, ::-1].T
    score = (W**2 / np.diag(Hinv)[None, :] ** 2).sum(axis=0)
    chosen = np.zeros(n, dtype=bool)
    chosen[np.argsort(-score, kind="stable")[:count]] = True
    return chosen


def solve_with_plane(W: np.ndarray, X: np.ndarray, bits: float, frac: float) -> tuple[np.ndarray, int]:
    """(Ŵ, bits on disk) of slab_obs with the residual plane on f·n salient columns (docstring)."""
    kw = dict(rank=1, sparse_bits=3 if bits < 2.75 else 4, fill=False, refit=0)
    m, n = W.shape
    if frac == 0:
        res = slabopt.solve(W, X, method="slab_obs", bits=bits, **kw)
        return res.reconstruct(), res.bits
    count = max(1, round(frac * n))
    plane_bits = m * count + 16 * m + 16 * count
    G = X.T @ X
    salient, d2 = salient_columns(W, G, count), np.diag(G)
    plane = np.zeros((m, n))
    scale: list[np.ndarray] = []
    original = slab_obs._column

    def column(st, w, c, tau, q, store, code_scale):
        if not salient[c]:
            return original(st, w, c, tau, q, store, code_scale)
        if not scale:  # a_i on W with the L fitted before the sweep
            r = np.abs(W - st.L * np.where(W >= 0, 1.0, -1.0))[:, salient]
            scale.append((r * d2[salient]).sum(axis=1) / max(d2[salient].sum(), 1e-300))
        base = np.where(w >= 0, st.L[:, c], -st.L[:, c])
        plane[:, c] = scale[0] * np.where(w - base >= 0, 1.0, -1.0)
        return original(st, w - plane[:, c], c, tau, q, store, code_scale) + plane[:, c]

    slab_obs._column = column
    try:
        res = slabopt.solve(W, X, method="slab_obs", bits=bits - plane_bits / (m * n), **kw)
    finally:
        slab_obs._column = original
    return res.reconstruct() + plane, res.bits + plane_bits


def main(sizes: list[float]) -> None:
    layers = load()
    weights = sum(W.size for W, _, _ in layers.values())
    for bits in sizes:
        for frac in FRACTIONS:
            errs, total, t0 = [], 0, time.perf_counter()
            for W, X, T in layers.values():
                W_hat, b = solve_with_plane(W.astype(np.float64), X.astype(np.float64), bits, frac)
                errs.append(heldout_error(W, W_hat, T))
                total += b
            err = math.exp(np.mean(np.log(errs)))
            print(f"{bits} bits, plane on {frac:.0%} of columns: {total / weights:.3f} bits on disk, "
                  f"error {err:.4e} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main([float(b) for b in sys.argv[1:]] or [2.0, 2.5, 3.0])
