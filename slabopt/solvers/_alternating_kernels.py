"""Optional numba kernels of the alternating solver (:mod:`slabopt.solvers.alternating`), for
its loop on NumPy CPU arrays with the "row" pattern.

One pass over each row of W does what the solver's reference loop does in about a dozen m×n array
passes, with the same floating-point operations in the same order, so its results are bit-for-bit
those of the reference:

    E_ij = W_ij − (L ⊙ B)_ij                      (L ⊙ B = ±fl(u_i v_j) at rank 1, ±L_ij otherwise)
    score_ij = fl(E_ij d_j)²                      sparse step (P4): keep the k largest of the row
    R_ij = W_ij − fl(mask_ij · E_ij)
    B_ij = [fl(fl(R_ij u_i) v_j) ≥ 0]             binary step (P2); [R_ij ≥ 0] before any L
    M_ij = fl(±R_ij · d_j)                        target of the low-rank step (P3), (R ⊙ B) D

The k-th largest score of a row is found exactly (:func:`row_threshold`): the entries inside a
bracket [lo, hi) that holds it are gathered and a quickselect runs on them alone. The bracket is
the previous iteration's threshold ± a margin (the scores move little between iterations), or,
failing that, two order statistics of a sample of the row; a bracket that misses is widened until
it is the whole row, so the answer never depends on the guess. Rows where ties at the threshold
admit more than k entries are left to the reference (``numpy.argpartition``), so the tie rule is
the reference's too.

numba is optional: without it (or for other arrays, patterns or dtypes) the solver runs the
reference NumPy / array-API code, which stays the definition of what these kernels compute.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

try:  # pragma: no cover - depends on the environment
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None

ENV_SWITCH = "SLABOPT_KERNELS"  # "0" turns the kernels off (the reference NumPy path runs)
SAMPLE = 512  # sample size of the first bracket of a row (no previous threshold)
NO_THRESHOLD = -1.0  # a row without a previous threshold (scores are >= 0)
MARGIN_MIN, MARGIN_MAX = 1e-4, 0.5  # relative half-width of a row's first bracket: 1.5 × last change
GROW, TRIES = 2.0, 24  # a missed bracket side grows 2× per try (counting only), then the whole row
BAND_MAX = 128  # a bracket holding more entries is halved (counting only) before gathering


def available() -> bool:
    """Whether the numba kernels can run here (numba importable and not switched off)."""
    return njit is not None and os.environ.get(ENV_SWITCH, "1") != "0"


def applies(W: Any, pattern_kind: str, k: int, rank: int) -> bool:
    """Whether the fused row kernel handles this problem: a C-contiguous NumPy float32/float64 W
    on the CPU, the "row" pattern with 0 < k < n, and rank ≥ 1."""
    return (
        isinstance(W, np.ndarray)
        and W.dtype in (np.float32, np.float64)
        and W.ndim == 2
        and W.flags.c_contiguous
        and pattern_kind == "row"
        and 0 < k < W.shape[1]
        and rank >= 1
    )


def _jit(func):
    """numba.njit with the on-disk cache, or the plain function when numba is missing."""
    if njit is None:  # pragma: no cover
        return func
    return njit(cache=True, nogil=True)(func)


# ----------------------------------------------------------------------------- selection
@_jit
def kth_smallest(a, c, idx):  # pragma: no cover - compiled
    """The value at position ``idx`` of sorted(a[:c]) (Hoare quickselect, in place).

    Median-of-three pivots; after 64 rounds the rest is sorted instead (no quadratic case).
    """
    lo, hi = 0, c - 1
    rounds = 0
    while lo < hi:
        rounds += 1
        if rounds > 64:
            part = np.sort(a[lo : hi + 1])
            return part[idx - lo]
        mid = (lo + hi) >> 1
        x, y, z = a[lo], a[mid], a[hi]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
            if x > y:
                y = x
        pivot = y
        i, j = lo, hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if idx <= j:
            hi = j
        elif idx >= i:
            lo = i
        else:
            return a[idx]
    return a[idx]


@_jit
def count_at_least(sc, lo, hi):  # pragma: no cover - compiled
    """(#{s ≥ lo}, #{s ≥ hi}) over the row ``sc`` (one vectorised pass, no stores)."""
    c_lo = 0
    c_hi = 0
    for j in range(sc.shape[0]):
        c_lo += sc[j] >= lo
        c_hi += sc[j] >= hi
    return c_lo, c_hi


@_jit
def band_pass(sc, lo, hi, buf, flags):  # pragma: no cover - compiled
    """One pass over the row ``sc`` for the bracket [lo, hi): returns (#{s ∈ [lo, hi)}, #{s ≥ hi})
    and gathers the entries in [lo, hi) into ``buf``.

    The membership flags are written as bytes (a vectorised loop) and scanned 8 at a time, so
    the gathering costs only for the few words that hold a member.
    """
    n = sc.shape[0]
    c_hi = 0
    for j in range(n):
        s = sc[j]
        flags[j] = (s >= lo) & (s < hi)
        c_hi += s >= hi
    for j in range(n, flags.shape[0]):
        flags[j] = 0
    words = flags.view(np.uint64)
    c = 0
    for w in range(flags.shape[0] // 8):
        if words[w] != 0:
            for j in range(8 * w, 8 * w + 8):
                if flags[j]:
                    buf[c] = sc[j]
                    c += 1
    return c, c_hi


@_jit
def sample_bracket(sc, k, buf):  # pragma: no cover - compiled
    """A guess [lo, hi) for the k-th largest of ``sc`` from order statistics of a strided sample
    (± 4 standard deviations of the sample quantile). Returns (lo, hi); lo = −1 / hi = inf mean
    "no bound" on that side."""
    n = sc.shape[0]
    step = max(1, n // SAMPLE)
    s = 0
    for j in range(0, n, step):
        buf[s] = sc[j]
        s += 1
    part = np.sort(buf[:s])
    q = 1.0 - k / n  # the threshold's quantile from below
    centre = q * s
    spread = 4.0 * math.sqrt(s * q * (1.0 - q)) + 2.0
    i_lo = math.floor(centre - spread)
    i_hi = math.ceil(centre + spread)
    lo = -1.0 if i_lo < 0 else float(part[i_lo])
    hi = np.inf if i_hi >= s else float(part[i_hi])
    return lo, hi


@_jit
def narrow(sc, k, c_lo, c_hi, bounds):  # pragma: no cover - compiled
    """Shrink the bracket ``bounds`` = [lo, hi) (which holds the k-th largest: c_hi = #{s ≥ hi} < k
    ≤ c_lo = #{s ≥ lo}) by bisection in value, one counting pass per halving, until at most
    ``BAND_MAX`` entries lie inside, so that gathering and quickselecting them is cheap. An
    unbounded side (hi = inf) is left alone; lo < 0 is the same bracket as lo = 0."""
    if bounds[0] < 0:
        bounds[0] = 0
    while c_lo - c_hi > BAND_MAX and bounds[1] < np.inf:
        lo, hi = bounds[0], bounds[1]
        bounds[0] = lo + (hi - lo) / 2  # the midpoint, rounded to the dtype of the scores
        mid = bounds[0]
        bounds[0] = lo
        if mid <= lo or mid >= hi:
            return
        c_mid, _ = count_at_least(sc, mid, mid)
        if c_mid >= k:
            bounds[0] = mid
            c_lo = c_mid
        else:
            bounds[1] = mid
            c_hi = c_mid


@_jit
def full_select(sc, k, buf):  # pragma: no cover - compiled
    """k-th largest of the whole row ``sc`` (quickselect on a copy in ``buf``)."""
    n = sc.shape[0]
    for j in range(n):
        buf[j] = sc[j]
    return kth_smallest(buf, n, n - k)


@_jit
def row_threshold(sc, k, prev, margin, buf, flags, bounds):  # pragma: no cover - compiled
    """(t, c): t the exact k-th largest entry of the row ``sc`` (1 ≤ k < len(sc), entries ≥ 0) and
    c = #{s ≥ t} (c > k means ties at t).

    First bracket: prev·(1 ± margin) when ``prev`` > 0, else (rows longer than 8·``SAMPLE``; shorter
    ones are searched whole) order statistics of a sample. When the
    answer lies above the bracket, the new bracket starts at the old upper bound and reaches
    ``GROW`` times as far from the guess (likewise below), up to ``TRIES`` tries; the last resort
    is the whole row [−1, inf). Each try is one counting pass; the bracket that holds the answer is
    narrowed (:func:`narrow`), gathered by :func:`band_pass` and a quickselect finds the answer
    in it. ``bounds`` (2, the dtype of ``sc``) holds the bracket in that dtype, so every comparison
    is exact.
    """
    if prev > 0.0:
        lo, hi = prev * (1.0 - margin), prev * (1.0 + margin)
        width_lo, width_hi = prev * margin, prev * margin
    elif sc.shape[0] <= 8 * SAMPLE:  # short row: one quickselect of the whole row is as cheap
        t = full_select(sc, k, buf)
        count = 0
        for j in range(sc.shape[0]):
            count += sc[j] >= t
        return t, count
    else:
        lo, hi = sample_bracket(sc, k, buf)
        width_lo, width_hi = -1.0, -1.0  # unknown: a miss opens that side fully
    for attempt in range(TRIES + 1):
        if attempt == TRIES:
            lo, hi = -1.0, np.inf
        bounds[0] = lo
        bounds[1] = hi
        c_lo, c_hi = count_at_least(sc, bounds[0], bounds[1])
        if c_hi < k <= c_lo:
            narrow(sc, k, c_lo, c_hi, bounds)
            c_band, c_hi = band_pass(sc, bounds[0], bounds[1], buf, flags)
            t = kth_smallest(buf, c_band, c_band - (k - c_hi))
            count = c_hi
            for j in range(c_band):
                count += buf[j] >= t
            return t, count
        if c_hi >= k:  # the threshold is at or above hi
            lo = hi
            if width_hi > 0.0:
                width_hi *= GROW
                hi = lo + width_hi
            else:
                hi = np.inf
        else:  # below lo
            hi = lo
            if width_lo > 0.0:
                width_lo *= GROW
                lo = hi - width_lo
                if lo <= 0.0:
                    lo = -1.0
            else:
                lo = -1.0
    return sc[0], -1  # not reached: the whole row always holds the answer


# ----------------------------------------------------------------------------- row passes
@_jit
def scores_row(Wi, d, Bi, kind, ui, v, Li, sc, consts):  # pragma: no cover - compiled
    """sc_j = fl(E_ij d_j)² with E_ij = W_ij − (L⊙B)_ij (kind 0: L⊙B = 0; 1: ±fl(u_i v_j); 2: ±L_ij).

    ``consts`` = [0, 1] in W's dtype (keeps every operation in that dtype).
    """
    n = Wi.shape[0]
    zero = consts[0]
    if kind == 0:
        for j in range(n):
            e = Wi[j] - zero
            s = e * d[j]
            sc[j] = s * s
    elif kind == 1:
        for j in range(n):
            p = ui * v[j]
            e = Wi[j] - (p if Bi[j] else -p)
            s = e * d[j]
            sc[j] = s * s
    else:
        for j in range(n):
            p = Li[j]
            e = Wi[j] - (p if Bi[j] else -p)
            s = e * d[j]
            sc[j] = s * s


@_jit
def finish_row(Wi, d, Bi, kind, ui, v, Li, sc, t, keep, use_keep, Bo, Mi, weighted, consts):
    """The rest of the row once its threshold is known: keep = [sc ≥ t] (or the given ``keep``
    when ``use_keep``), R = W − fl(keep·E), B = [R ⊙ L ≥ 0] (kind 0: [R ≥ 0]),
    M = fl(±R·d) (±R when not ``weighted``). ``Bo`` may be ``Bi`` (each entry is read first)."""
    n = Wi.shape[0]
    zero, one = consts[0], consts[1]
    for j in range(n):
        w = Wi[j]
        if kind == 0:
            e = w - zero
        elif kind == 1:
            p = ui * v[j]
            e = w - (p if Bi[j] else -p)
        else:
            p = Li[j]
            e = w - (p if Bi[j] else -p)
        if use_keep:
            kj = keep[j]
        else:
            kj = sc[j] >= t
            keep[j] = kj
        r = w - e * (one if kj else zero)
        if kind == 0:
            b = r >= zero
        elif kind == 1:
            b = (r * ui) * v[j] >= zero
        else:
            b = r * Li[j] >= zero
        Bo[j] = b
        rb = r if b else -r
        Mi[j] = rb * d[j] if weighted else rb


@_jit
def fused_rows(W, d, B_old, kind, u, v, L, consts, k, thr, margin, B_new, mask, M, weighted, tied):
    """The sparse, binary and SVD-target steps of one iteration, row by row (module docstring).

    ``thr`` (m, float64) holds each row's previous threshold (``NO_THRESHOLD`` = none) and gets the
    new one; ``margin`` (m) the relative bracket half-width, set to 1.5× the observed change.
    Rows with ties at the threshold are flagged in ``tied`` and not finished (the caller does
    them). Returns the number of tied rows.
    """
    m, n = W.shape
    sc = np.empty(n, dtype=W.dtype)
    buf = np.empty(n, dtype=W.dtype)
    flags = np.zeros(8 * ((n + 7) // 8), dtype=np.uint8)
    bounds = np.empty(2, dtype=W.dtype)
    n_tied = 0
    for i in range(m):
        Wi = W[i]
        Bi = B_old[i]
        ui = u[i]
        Li = L[i] if kind == 2 else L[0]
        scores_row(Wi, d, Bi, kind, ui, v, Li, sc, consts)
        t, count = row_threshold(sc, k, thr[i], margin[i], buf, flags, bounds)
        prev = thr[i]
        thr[i] = t
        if prev >= 0.0 and t > 0.0:
            change = abs(float(t) - prev) / float(t)
            margin[i] = min(max(1.5 * change, MARGIN_MIN), MARGIN_MAX)
        if count != k:
            tied[i] = True
            n_tied += 1
            continue
        tied[i] = False
        finish_row(Wi, d, Bi, kind, ui, v, Li, sc, t, mask[i], False, B_new[i], M[i], weighted, consts)
    return n_tied


@_jit
def finish_rows(W, d, B_old, kind, u, v, L, consts, rows, B_new, mask, M, weighted):  # pragma: no cover
    """:func:`finish_row` with the given ``mask`` rows for the listed ``rows``."""
    for t in range(rows.shape[0]):
        i = rows[t]
        Li = L[i] if kind == 2 else L[0]
        finish_row(W[i], d, B_old[i], kind, u[i], v, Li, W[i], W[i, 0], mask[i], True, B_new[i], M[i],
                   weighted, consts)


@_jit
def scores_rows(W, d, B_old, kind, u, v, L, consts, rows, out):  # pragma: no cover - compiled
    """The score rows of :func:`scores_row` for the listed ``rows``, into ``out`` (len(rows) × n)."""
    for t in range(rows.shape[0]):
        i = rows[t]
        Li = L[i] if kind == 2 else L[0]
        scores_row(W[i], d, B_old[i], kind, u[i], v, Li, out[t], consts)


@_jit
def sparse_part(W, B_old, kind, u, v, L, consts, mask, S):  # pragma: no cover - compiled
    """S = fl(mask · E) with E = W − L ⊙ B (the reference's ``SE *= mask``)."""
    m, n = W.shape
    for i in range(m):
        Wi = W[i]
        Bi = B_old[i]
        ui = u[i]
        Li = L[i] if kind == 2 else L[0]
        zero, one = consts[0], consts[1]
        for j in range(n):
            if kind == 0:
                e = Wi[j] - zero
            elif kind == 1:
                p = ui * v[j]
                e = Wi[j] - (p if Bi[j] else -p)
            else:
                p = Li[j]
                e = Wi[j] - (p if Bi[j] else -p)
            S[i, j] = e * (one if mask[i, j] else zero)


# ----------------------------------------------------------------------------- driver
class RowKernel:
    """State of the fused row pass across iterations: bool sign buffers, thresholds, margins.

    ``step(U, V, L)`` runs one iteration's sparse, binary and SVD-target steps for the current
    factors (``U is None`` before any L) and leaves the mask in :attr:`mask`, the new signs in
    :attr:`B` and M in :attr:`M`; :meth:`sparse` and :meth:`signs` give S and B as the reference
    holds them.
    """

    def __init__(self, W: np.ndarray, d: np.ndarray, k: int, weighted: bool):
        m, n = W.shape
        self.W, self.k, self.weighted = W, int(k), bool(weighted)
        self.d = np.ascontiguousarray(d, dtype=W.dtype)
        self.B = np.zeros((m, n), dtype=np.bool_)  # signs of the last step (True = +1)
        self.B_prev = np.zeros((m, n), dtype=np.bool_)  # signs the last step started from
        self.mask = np.zeros((m, n), dtype=np.bool_)
        self.M = np.empty_like(W)
        self.thr = np.full(m, NO_THRESHOLD)
        self.margin = np.full(m, 1e-3)
        self.tied = np.zeros(m, dtype=np.bool_)
        self.consts = np.array([0, 1], dtype=W.dtype)
        self.last = (0, None, None, None)  # (kind, u, v, L) of the last step

    def _factors(self, U, V, L):
        """(kind, u, v, L) arguments of the compiled passes for the factors of L = U Vᵀ."""
        W = self.W
        m, n = W.shape
        dummy_u = np.zeros(m, dtype=W.dtype)
        dummy_L = np.zeros((1, n), dtype=W.dtype)
        if U is None:
            return 0, dummy_u, np.zeros(n, dtype=W.dtype), dummy_L
        if U.shape[1] == 1:
            u = np.ascontiguousarray(U[:, 0], dtype=W.dtype)
            v = np.ascontiguousarray(V[:, 0], dtype=W.dtype)
            return 1, u, v, dummy_L
        return 2, dummy_u, np.zeros(n, dtype=W.dtype), np.ascontiguousarray(L, dtype=W.dtype)

    def step(self, U, V, L=None) -> None:
        """One iteration's row pass for L = U Vᵀ (``L`` formed when rank > 1)."""
        kind, u, v, Lm = self._factors(U, V, L)
        self.B_prev, self.B = self.B, self.B_prev
        args = (self.W, self.d, self.B_prev, kind, u, v, Lm, self.consts)
        fused_rows(*args, self.k, self.thr, self.margin, self.B, self.mask, self.M, self.weighted,
                   self.tied)
        rows = np.flatnonzero(self.tied)
        if rows.size:  # ties at the threshold: the reference's index selection decides
            n = self.W.shape[1]
            scores = np.empty((rows.size, n), dtype=self.W.dtype)
            scores_rows(*args, rows, scores)
            idx = np.argpartition(scores, n - self.k, axis=-1)[:, n - self.k :]
            self.mask[rows] = False
            self.mask[rows[:, None], idx] = True
            finish_rows(*args, rows, self.B, self.mask, self.M, self.weighted)
        self.last = (kind, u, v, Lm)

    def sparse(self, out: np.ndarray | None = None) -> np.ndarray:
        """S = mask ⊙ (W − L ⊙ B) of the last step (dense m×n, as the reference holds it), written
        into ``out`` when given (e.g. :attr:`M` once the loop no longer needs it)."""
        kind, u, v, Lm = self.last
        S = np.empty_like(self.W) if out is None else out
        sparse_part(self.W, self.B_prev, kind, u, v, Lm, self.consts, self.mask, S)
        return S
