"""Sparsity patterns of S and the sparse step that selects S (docs/formulation.md §4.3, §5.1; P4).

For fixed L ⊙ B and R = W − L ⊙ B, the diagonal objective of the sparse part is
Σ_ij d_j² (R_ij − S_ij)²; keeping R_ij at the allowed positions with the largest scores
|R_ij|·d_j and zeroing the rest is optimal under each pattern (per-row count, global count,
or N of every M consecutive entries of a row).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from . import _backend as bk

KNOWN_PATTERNS = ('"row"', '"global"', '"N:M" (e.g. "2:4", "4:8")')


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern: ``kind`` is "row", "global" or "nm" (then ``n`` of every ``m``)."""

    kind: str
    n: int = 0
    m: int = 0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.kind == "nm" else self.kind


def nm_code_bits(n: int, m: int) -> int:
    """Bits of one N:M group stored as its combination code: ⌈log₂ C(M, N)⌉ (at least 1)."""
    return max(1, math.ceil(math.log2(math.comb(m, n))))


def bitmask_bits(shape: tuple[int, int], pattern: Pattern) -> int:
    """Bits of the positions of S as the saved format stores them: a bitmask of m·n bits for the
    "row" and "global" patterns, one combination code per group, m·(n/M)·⌈log₂ C(M, N)⌉ bits, for N:M."""
    m, n = shape
    if pattern.kind == "nm":
        return m * (n // pattern.m) * nm_code_bits(pattern.n, pattern.m)
    return m * n


def parse_pattern(pattern: str | Pattern) -> Pattern:
    """Parse "row", "global" or "N:M" (0 < N < M) into a :class:`Pattern`."""
    if isinstance(pattern, Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a string, got {type(pattern).__name__}")
    if pattern in ("row", "global"):
        return Pattern(pattern)
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if match:
        n, m = int(match.group(1)), int(match.group(2))
        if 0 < n < m:
            return Pattern("nm", n, m)
        raise ValueError(f"N:M pattern needs 0 < N < M, got {pattern!r}")
    raise ValueError(f"unknown pattern {pattern!r}; known patterns: {', '.join(KNOWN_PATTERNS)}")


def select_mask(scores: Any, budget: Any, work: Any = None) -> Any:
    """Boolean mask of the entries to keep: the largest ``scores`` allowed by ``budget``.

    ``scores`` is m×n and non-negative (|R|·d). Exactly ``budget.nnz`` entries are True.
    ``work`` is an optional m×n scratch buffer for the per-row selection (its content is lost).
    """
    xp = bk.namespace(scores)
    m, n = scores.shape
    pat = budget.pattern
    if budget.nnz == 0:
        return xp.zeros((m, n), dtype=xp.bool, device=bk.device(scores))
    if pat.kind == "row":
        return top_k_rows(scores, budget.nnz_per_row, work)
    if pat.kind == "global":
        return xp.reshape(top_k_rows(xp.reshape(scores, (1, m * n)), budget.nnz), (m, n))
    groups = xp.reshape(scores, (m, n // pat.m, pat.m))
    idx = bk.topk_indices(groups, pat.n)
    return xp.reshape(bk.mask_from_indices(xp, groups.shape, idx), (m, n))


def top_k_rows(scores: Any, k: int, work: Any = None) -> Any:
    """Mask of exactly ``k`` largest entries in each row of the 2-D ``scores``.

    Fast path: compare with each row's k-th largest value (one partial selection, no scatter).
    Rows where ties at that value admit more than k entries are redone by index selection, so
    the count is always exact.
    """
    xp = bk.namespace(scores)
    m, n = scores.shape
    if k == 0:
        return xp.zeros((m, n), dtype=xp.bool, device=bk.device(scores))
    if k >= n:
        return xp.ones((m, n), dtype=xp.bool, device=bk.device(scores))
    mask = scores >= bk.kth_largest(scores, k, work)
    if int(xp.count_nonzero(mask)) == m * k:  # every row has >= k, so none has more
        return mask
    counts = xp.count_nonzero(mask, axis=1)
    tied = xp.nonzero(counts != k)[0]
    if tied.shape[0]:
        sub = xp.take(scores, tied, axis=0)
        fixed = bk.mask_from_indices(xp, tuple(sub.shape), bk.topk_indices(sub, k))
        mask = bk.put_rows(xp, mask, tied, fixed)
    return mask
