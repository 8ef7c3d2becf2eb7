"""S on every entry with L aligned to its grid (S + L ⊙ B as a (q+1)-bit quantizer) against GPTQ at
5 and 6 bits per weight.

A prototype, not a shipped option. When S keeps every entry (k = n), L ⊙ B + S can hold a uniform
(q+1)-bit grid: with l_ij = 2^(q−1)·σ_i and S's codes σ_i·(c − 2^(q−1)), the entries with b = +1
take σ_i·{0, …, 2^q − 1} and those with b = −1 take σ_i·{−2^q, …, −1}. ``slab_obs``'s start
(``_start``) is replaced for the run by one that, on dense budgets, sets L so (rank 1, V = 1, σ_i
by a weighted search over shrinks of max|w_i|/2^q); the sweep, fill and refit are slab_obs's.
"plain" is slab_obs as shipped at the same ``bits``. Block 15's seven SmolLM2 layers, held-out
error as ``benchmarks/lowbit_layers.py``.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.lowbit_dense
"""

from __future__ import annotations

import math

import numpy as np

import slabopt
import slabopt.solvers.slab_obs as slab_obs

from .lowbit_layers import heldout_error, load

SIZES = ((5.05, 4, 5), (5.3, 4, 5), (6.05, 5, 6), (6.3, 5, 6))  # (bits asked, q of S, GPTQ's bits)


def symmetric_scales(W: np.ndarray, d2: np.ndarray, levels: int) -> np.ndarray:
    """σ (m×1) minimising Σ_j d_j² (w_ij − σ_i·clamp(round(w_ij/σ_i), −levels, levels − 1))² over
    σ_i = p·max_j |w_ij| / levels, p on a grid of 56 shrinks in [0.5, 1.05]."""
    amax = np.maximum(np.abs(W).max(axis=1, keepdims=True), 1e-30) / levels
    best, best_err = amax.copy(), np.full(W.shape[0], np.inf)
    for p in np.linspace(0.5, 1.05, 56):
        s = amax * p
        err = ((W - s * np.clip(np.round(W / s), -levels, levels - 1)) ** 2 * d2).sum(axis=1)
        better = err < best_err
        best[better], best_err[better] = s[better], err[better]
    return best


def aligned_start(q: int):
    """slab_obs's ``_start``, then, where S keeps every entry, L set to 2^(q−1)·σ_i (docstring)."""
    original = slab_obs._start

    def start(W, d, hdiag, rank, grouped, blocks, k, spread):
        st = original(W, d, hdiag, rank, grouped, blocks, k, spread)
        if k == W.shape[1] and rank == 1 and not grouped:
            st.U[:, 0] = 2 ** (q - 1) * symmetric_scales(W, d * d, 2**q)[:, 0]
            st.V[:, 0] = 1.0
            st.L[:] = np.outer(st.U[:, 0], st.V[:, 0])
        return st

    return start


def point(layers: dict, method: str, **kw) -> tuple[float, float, bool]:
    """(bits per weight on disk, geometric-mean held-out error, whether S kept every entry)."""
    errs, bits, dense = [], 0, True
    for W, X, T in layers.values():
        res = slabopt.solve(W.astype(np.float64), X.astype(np.float64), method=method, **kw)
        dense &= res.sparse is not None and res.sparse.nnz == W.size
        errs.append(heldout_error(W, res.reconstruct(), T))
        bits += res.bits
    return bits / sum(W.size for W, _, _ in layers.values()), math.exp(np.mean(np.log(errs))), dense


def main() -> None:
    layers = {n: v for n, v in load().items() if ".15." in n}
    original = slab_obs._start
    for bits, q, gptq_bits in SIZES:
        b, e, _ = point(layers, "gptq", ratio=None, bits=gptq_bits, group_size=None)
        print(f"gptq int{gptq_bits} per channel: {b:.3f} bits, error {e:.4e}", flush=True)
        for label, start in (("plain", original), ("aligned", aligned_start(q))):
            slab_obs._start = start
            try:
                b, e, dense = point(layers, "slab_obs", bits=bits, rank=1, sparse_bits=q)
            finally:
                slab_obs._start = original
            kept = "dense" if dense else "not dense"
            print(f"slab_obs {bits} q{q} {label}: {b:.3f} bits, error {e:.4e}, S {kept}", flush=True)


if __name__ == "__main__":
    main()
