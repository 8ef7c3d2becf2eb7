"""Golomb–Rice codes of the positions of S (docs/formulation.md §4.8).

A row of S that keeps k of its n entries, at columns c_1 < … < c_k, is stored as the k gaps

    g_1 = c_1,   g_t = c_t − c_{t−1} − 1   (g_t ≥ 0,  Σ g_t = c_k − k + 1 ≤ n − k),

each as a Rice code of parameter p: ⌊g/2^p⌋ ones, one zero, then the p low bits of g, so a gap costs
⌊g/2^p⌋ + 1 + p bits. Since Σ⌊g_t/2^p⌋ ≤ ⌊Σ g_t / 2^p⌋, a row costs at most

    R_p(n, k) = k·(p + 1) + ⌊(n − k) / 2^p⌋   bits,

whatever its positions: the bound the budget charges before solving (:func:`rice_bound`). The
parameter is fixed by (n, k) alone, p(n, k) = the smallest p minimising R_p(n, k), so nothing but
the gaps is stored. p = 0 gives R_0 = n, the bitmask's cost, so the code never costs more than a
bitmask; at density ρ = k/n it approaches the entropy n·H(ρ) (≈ 0.08 bits per weight at 1 %).
The bits counted for a solved S are the exact length of its code (:func:`rice_bits`), ≤ the bound.

A row that keeps more than half of its entries stores the positions it does *not* keep instead
(the same code of the complement, k' = n − k), so a dense S costs nothing for its positions:
the coded set is the smaller one, fixed by (n, k) alone (:func:`coded_count`).
"""

from __future__ import annotations

import numpy as np


def coded_count(n: int, k: int) -> int:
    """k' = min(k, n − k): how many positions a row keeping k of n entries codes (the kept ones,
    or the left-out ones when k > n/2)."""
    return min(k, n - k)


def complement_rows(indptr: np.ndarray, indices: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The CSR pattern of the positions each row codes: its kept columns where k ≤ n/2, the other
    columns (ascending) where k > n/2."""
    indptr = np.asarray(indptr, dtype=np.int64)
    cols = np.asarray(indices, dtype=np.int64)
    counts = np.diff(indptr)
    if not np.any(counts > n // 2):
        return indptr, cols
    rows = []
    for i, k in enumerate(counts.tolist()):
        kept = cols[indptr[i]:indptr[i + 1]]
        rows.append(kept if k <= n - k else np.setdiff1d(np.arange(n), kept))
    coded = np.array([r.size for r in rows], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(coded)]), np.concatenate(rows) if rows else cols


def rice_parameter(n: int, k: int) -> int:
    """p(n, k): the smallest p ≥ 0 minimising k·(p + 1) + ⌊(n − k)/2^p⌋."""
    if k <= 0:
        return 0
    costs = [k * (p + 1) + ((n - k) >> p) for p in range(max(n, 1).bit_length() + 1)]
    return int(np.argmin(costs))


def row_parameters(n: int, counts: np.ndarray) -> np.ndarray:
    """p(n, k_i) of every row (int64), computed once per distinct count."""
    uniq, inverse = np.unique(np.asarray(counts, dtype=np.int64), return_inverse=True)
    return np.array([rice_parameter(n, int(k)) for k in uniq], dtype=np.int64)[inverse.reshape(-1)]


def rice_bound(n: int, k: int) -> int:
    """R_p(n, k') at p = p(n, k'), k' = :func:`coded_count`: the most bits the positions of a row of
    n entries keeping k can cost (0 for k = 0 and k = n)."""
    k = coded_count(n, k)
    if k <= 0:
        return 0
    p = rice_parameter(n, k)
    return k * (p + 1) + ((n - k) >> p)


def rice_bounds(n: int) -> np.ndarray:
    """:func:`rice_bound` (n, k) for every k = 0…n, as int64."""
    k = np.minimum(np.arange(n + 1, dtype=np.int64), n - np.arange(n + 1, dtype=np.int64))
    p = np.arange(max(n, 1).bit_length() + 1, dtype=np.int64)[:, None]
    costs = k * (p + 1) + ((n - k) >> p)
    return np.where(k > 0, costs.min(axis=0), 0)


def row_gaps(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The gaps g_t of every row of a CSR pattern (columns ascending in each row), concatenated."""
    indptr = np.asarray(indptr, dtype=np.int64)
    cols = np.asarray(indices, dtype=np.int64)
    prev = np.empty_like(cols)
    if cols.size:
        prev[1:] = cols[:-1]
        starts = indptr[:-1][np.diff(indptr) > 0]
        prev[starts] = -1
    return cols - prev - 1


def rice_bits(indptr: np.ndarray, indices: np.ndarray, n: int) -> int:
    """Exact length in bits of the Rice codes of every row (each row with its own p(n, k_i)) of
    the positions it codes (:func:`complement_rows`)."""
    indptr, indices = complement_rows(indptr, indices, n)
    counts = np.diff(indptr)
    gaps = row_gaps(indptr, indices)
    params = np.repeat(row_parameters(n, counts), counts)
    return int(np.sum((gaps >> params) + 1 + params))


def rice_encode(indptr: np.ndarray, indices: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(bytes, bit length): the rows' Rice codes (of the positions each row codes,
    :func:`complement_rows`) one after another, most significant bit first, packed 8 to a byte (the
    last byte padded with zeros)."""
    indptr, indices = complement_rows(indptr, indices, n)
    counts = np.diff(indptr)
    gaps = row_gaps(indptr, indices)
    params = np.repeat(row_parameters(n, counts), counts)
    ones = gaps >> params
    lengths = ones + 1 + params
    total = int(lengths.sum())
    bits = np.zeros(total, dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    unary = np.repeat(starts, ones) + (np.arange(int(ones.sum())) - np.repeat(np.cumsum(ones) - ones, ones))
    bits[unary] = 1
    for b in range(int(params.max()) if params.size else 0):  # low bits, most significant first
        has = params > b
        pos = starts[has] + ones[has] + 1 + (params[has] - 1 - b)
        bits[pos] = (gaps[has] >> b) & 1
    return np.packbits(bits), total


def _decode_into(data: np.ndarray, coded: np.ndarray, params: np.ndarray, flip: np.ndarray,
                 mask: np.ndarray) -> None:
    """Fill the m×n boolean ``mask`` from the packed codes: row i reads coded[i] gaps of parameter
    params[i] and marks their columns (``flip[i]``: the row coded its left-out columns, so those are
    cleared in a row of True)."""
    pos = 0
    for i in range(mask.shape[0]):
        if flip[i]:
            mask[i, :] = True
        col = -1
        p = params[i]
        for _ in range(coded[i]):
            ones = 0
            while (data[pos >> 3] >> (7 - (pos & 7))) & 1:
                ones += 1
                pos += 1
            pos += 1
            low = 0
            for _ in range(p):
                low = (low << 1) | ((data[pos >> 3] >> (7 - (pos & 7))) & 1)
                pos += 1
            col += (ones << p) + low + 1
            mask[i, col] = not flip[i]


try:  # the decoder is a plain loop over the bits: compiled where numba is installed
    from numba import njit

    _decode_into = njit(cache=True, nogil=True)(_decode_into)
except ImportError:  # pragma: no cover - numba comes with slabopt[llm]
    pass


def rice_decode_mask(data: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """The m×n boolean pattern of codes written by :func:`rice_encode` for rows keeping
    ``counts`` entries of ``n``."""
    counts = np.asarray(counts, dtype=np.int64)
    coded = np.minimum(counts, n - counts)
    params = row_parameters(n, coded)
    mask = np.zeros((counts.size, n), dtype=np.bool_)
    padded = np.concatenate([np.asarray(data, dtype=np.uint8), np.zeros(1, np.uint8)])
    _decode_into(padded, coded, params, counts > n - counts, mask)
    return mask


def rice_decode(data: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """The kept column indices (concatenated rows, ascending in each) of codes written by
    :func:`rice_encode` for rows keeping ``counts`` entries of ``n``."""
    return np.nonzero(rice_decode_mask(data, counts, n))[1]
