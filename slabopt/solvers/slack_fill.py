"""Spend what the position bound leaves: entries added to S after the sweep (docs/formulation.md §5.9).

The budget charges the positions of S at the Rice bound m·R_p(n, k) before the mask is known; the
exact code of the mask the sweep chose is shorter. The difference is spent on more kept entries,
the same number Δ in every row (the codes of S are stored m × k), chosen greedily under the full
objective g(Ŵ) = tr(E H Eᵀ), E = W − Ŵ.

Rows are independent in g. With r = E H (row i: r_i = e_i H), setting the entry (i, j) of S from 0
to δ changes g by −2δ r_ij + δ² H_jj. On the grid of the row's codes, δ = σ_ij (c − 2^(q−1)),
c ∈ {0, …, 2^q − 1}, the convex quadratic is smallest at the grid point nearest r_ij / H_jj:

    c* = clamp(round(r_ij / (H_jj σ_ij)) + 2^(q−1), 0, 2^q − 1),   gain = 2δ r_ij − δ² H_jj ≥ 0.

Each step takes in every row the unkept entry of largest gain and updates r_i ← r_i − δ H_j.
Steps continue while the exact bits of the enlarged S (its Rice code counted exactly) stay within
the bits the budget charged; the step that would exceed them is not taken.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def best_entry_values(r: np.ndarray, h: np.ndarray, sigma: np.ndarray | None, q: int | None,
                      store: type = np.float16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(δ, codes, gain) for every entry: the stored value δ that minimises −2δ r + δ² h, on the
    code grid σ·(c − 2^(q−1)) (a zero σ stores c = 2^(q−1), δ = 0), or, with ``q=None``, r/h in
    the ``store`` dtype; gain = 2δ r − δ² h."""
    if q is None:
        delta = np.divide(r, h, out=np.zeros_like(r), where=h > 0).astype(store).astype(np.float64)
        codes = np.zeros(r.shape, dtype=np.uint8)
    else:
        half = 2 ** (q - 1)
        safe = np.where(sigma > 0, sigma, 1.0)
        c = np.clip(np.rint(np.divide(r, h * safe, out=np.zeros_like(r), where=h > 0)) + half, 0, 2**q - 1)
        c = np.where(sigma > 0, c, half)
        delta, codes = sigma * (c - half), c.astype(np.uint8)
    return delta, codes, 2 * delta * r - delta**2 * h


CHUNK_ELEMS = 1 << 22  # entries per block of rows whose candidate values are built at once


def best_unkept(R: np.ndarray, h: np.ndarray, mask: np.ndarray, sigma: np.ndarray | None, q: int | None,
                store: type) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(columns, δ, codes, gains): in every row the unkept entry of largest gain
    (:func:`best_entry_values`), built a block of rows at a time (no m×n temporaries)."""
    m, n = R.shape
    cols, delta, codes, gains = (np.empty(m, dtype=np.int64), np.empty(m), np.empty(m, dtype=np.uint8),
                                 np.empty(m))
    step = max(1, CHUNK_ELEMS // n)
    for i0 in range(0, m, step):
        rows = slice(i0, min(m, i0 + step))
        d, c, g = best_entry_values(R[rows], h[None, :], None if sigma is None else sigma[rows], q, store)
        g[mask[rows]] = -np.inf
        j = np.argmax(g, axis=1)
        at = np.arange(j.size)
        cols[rows], delta[rows], codes[rows], gains[rows] = j, d[at, j], c[at, j], g[at, j]
    return cols, delta, codes, gains


def greedy_fill(R: np.ndarray, H: np.ndarray, mask: np.ndarray, sigma: np.ndarray | None, q: int | None,
                store: type, fits: Callable[[np.ndarray], bool],
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Add entries to ``mask`` (in place), one per row per step, while ``fits(mask)`` holds.

    ``R`` = (W − Ŵ) H (updated in place), ``sigma`` the m×n scales of the codes. Returns the added
    entries' rows, columns, values δ, codes and the total gain Σ (the drop of g)."""
    m = R.shape[0]
    rows = np.arange(m)
    h = np.diag(H)
    picked: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    gain_total = 0.0
    while not mask.all(axis=1).any():
        cols, d, codes, gain = best_unkept(R, h, mask, sigma, q, store)
        mask[rows, cols] = True
        if not fits(mask):
            mask[rows, cols] = False
            break
        step = max(1, CHUNK_ELEMS // R.shape[1])
        for i0 in range(0, m, step):  # R_i −= δ_i H_j, a block of rows at a time
            block = slice(i0, min(m, i0 + step))
            R[block] -= d[block, None] * H[cols[block]]
        picked.append((cols, d, codes))
        gain_total += float(gain.sum())
    if not picked:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0), np.zeros(0, dtype=np.uint8), 0.0
    cols, d, c = (np.concatenate(x) for x in zip(*picked, strict=True))
    return np.tile(rows, len(picked)), cols, d, c, gain_total
