"""Quantise the values of S after a solve, and refit L ⊙ B to them (docs/formulation.md §5.6).

With ``sparse_bits`` = q the solver first runs at the budget that counts q-bit values
(§4.7); then the kept values are coded (:mod:`slabopt.sparse_codes`) and, for S + L ⊙ B,
``refit`` rounds of exact block steps of the diagonal objective f = ‖(W − Ŵ)D‖_F² follow with
the mask fixed:

1. binary step   B = sign((W − Ŝ) ⊙ L)                     (P2, Ŝ the coded S)
2. low-rank step L = SVD_r(((W − Ŝ) ⊙ B) D) D⁻¹            (P3)
3. code step     Ŝ = codes of (W − L ⊙ B) on the mask       (row scales by weighted grid search)

The decomposition of least f among the coded start and the rounds is returned (a round that does
not lower f ends the refit), so the refit never raises f.

Memory: Ŝ is written into the solver's own m×n buffer of S (unless that is a view of W), the
steps share one m×n work buffer (R, then the SVD target, then the error of f), B is kept as
booleans, and the rounds keep the best codes rather than a second Ŝ. Everything else of size m×n
(L ⊙ B, W − L ⊙ B, the kept values and their weights, the sign products) is formed one block of
rows at a time. Each entry goes through the same floating-point operations as in the
whole-matrix formulas above, so the result is the same to the bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _backend as bk
from ..linalg import outer
from ..problem import Decomposition, Problem
from ..quantized import QuantizedMatrix
from ..signs import is_positive, pm1_from_positive
from ..sparse_codes import row_step, sparse_codes
from .alternating import lowrank_step


def _code_blocks(m: int, k: int) -> list[slice]:
    """The row blocks S is coded in: those of :func:`slabopt.sparse_codes.fit_row_scales`."""
    step = row_step(k)
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]


def code_sparse(problem: Problem, rows_of: Callable[[slice], Any], mask: Any, bits: int,
                out: Any) -> QuantizedMatrix:
    """The entries of E on ``mask`` (k per row) as q-bit codes with weights d_j²; the dense m×n Ŝ
    they decode to is written into ``out``.

    E is read one block of rows at a time, ``rows_of(rows)`` = E[rows] (so ``out`` may be E's own
    buffer: a block is read before it is written).
    """
    xp = problem.xp
    m = problem.shape[0]
    k = problem.budget.nnz_per_row
    d2 = problem.d * problem.d
    codes, scales = [], []
    for rows in _code_blocks(m, k):
        E, kept = rows_of(rows), mask[rows, :]
        values = xp.reshape(E[kept], (rows.stop - rows.start, k))
        weights = xp.reshape(xp.take(d2, xp.nonzero(kept)[1], axis=0), values.shape)
        part = sparse_codes(values, weights, bits, problem.budget.value_bits)
        block = out[rows, :]
        block[...] = 0
        block[kept] = xp.reshape(part.dequantize(E.dtype), (-1,))
        codes.append(part.codes)
        scales.append(part.scales)
    return QuantizedMatrix(codes=xp.concat(codes, axis=0), scales=xp.concat(scales, axis=0), zeros=None,
                           bits=bits, group_size=None)


def decode_sparse(problem: Problem, codes: QuantizedMatrix, mask: Any, out: Any) -> Any:
    """``out`` ← the dense Ŝ of ``codes`` on ``mask`` (what :func:`code_sparse` wrote with them)."""
    m = problem.shape[0]
    for rows in _code_blocks(m, codes.shape[1]):
        part = QuantizedMatrix(codes=codes.codes[rows, :], scales=codes.scales[rows, :], zeros=None,
                               bits=codes.bits, group_size=None)
        block, kept = out[rows, :], mask[rows, :]
        block[...] = 0
        block[kept] = problem.xp.reshape(part.dequantize(out.dtype), (-1,))
    return out


def _lowrank_rows(U: Any, V: Any, L: Any, rows: slice) -> Any:
    """L[rows] for L = U Vᵀ: a broadcast product for rank 1, else rows of the formed ``L``."""
    return outer(U[rows, :], V) if L is None else L[rows, :]


def _signed_rows(U: Any, V: Any, L: Any, B: Any, rows: slice, dtype: Any) -> Any:
    """(L ⊙ B)[rows] for the boolean "is +1" matrix ``B``."""
    return _lowrank_rows(U, V, L, rows) * pm1_from_positive(B[rows, :], dtype)


def _formed(U: Any, V: Any) -> Any:
    """L = U Vᵀ formed once for rank > 1 (its rows from a GEMM of the whole U); ``None`` for rank 1."""
    return None if U.shape[1] == 1 else outer(U, V)


def _objective(problem: Problem, S: Any, U: Any, V: Any, L: Any, B: Any, out: Any) -> float:
    """f = ‖(W − Ŝ − L ⊙ B) D‖_F², formed in the m×n buffer ``out``."""
    m, n = problem.shape
    out[...] = problem.W
    out -= S
    for rows in bk.row_blocks(m, n):
        block = out[rows, :]
        block -= _signed_rows(U, V, L, B, rows, out.dtype)
    out *= problem.d
    out **= 2
    return bk.to_float(problem.xp.sum(out))


def _binary_step(problem: Problem, S: Any, U: Any, V: Any, L: Any, R: Any, out: Any) -> Any:
    """R ← (W − Ŝ) ⊙ B with B = sign(R ⊙ L) (P2) kept as booleans in ``out`` (a new array when
    ``None``), which is returned."""
    xp = problem.xp
    m, n = problem.shape
    R[...] = problem.W
    R -= S
    B = xp.empty((m, n), dtype=xp.bool, device=bk.device(R)) if out is None else out
    for rows in bk.row_blocks(m, n):
        block = R[rows, :]
        B[rows, :] = is_positive(block * _lowrank_rows(U, V, L, rows))
        block *= pm1_from_positive(B[rows, :], R.dtype)
    return B


def _overwritable(S: Any, W: Any) -> bool:
    """Whether the solver's S may take Ŝ in place: a writable NumPy or PyTorch array of W's dtype
    and shape that shares no memory with W."""
    if S is W or S.dtype != W.dtype or tuple(S.shape) != tuple(W.shape):
        return False
    if isinstance(S, np.ndarray) and isinstance(W, np.ndarray):
        return bool(S.flags.writeable) and not np.may_share_memory(S, W)
    untyped = getattr(S, "untyped_storage", None)
    if untyped is None or not hasattr(W, "untyped_storage"):
        return False
    return untyped().data_ptr() != W.untyped_storage().data_ptr()


def quantize_sparse_part(problem: Problem, dec: Decomposition, bits: int, refit: int = 2) -> Decomposition:
    """``dec`` with the values of S as q-bit codes (``sparse_codes``), L ⊙ B refitted by up to
    ``refit`` rounds when the method stores exactly S + L ⊙ B (module docstring);
    ``info["sparse_refit"]`` holds f of the coded start and after each round.

    ``dec.S`` is overwritten with the coded Ŝ where it is a buffer of its own (module docstring).
    """
    xp, W = problem.xp, problem.W
    if dec.mask is None or problem.budget.nnz == 0:
        return dec
    mask, S = dec.mask, dec.S
    out = S if _overwritable(S, W) else xp.empty_like(S)
    codes = code_sparse(problem, lambda rows: S[rows, :], mask, bits, out)
    S = out
    plain = dec.levels is None and dec.row_offset is None and dec.quant is None
    if dec.U is None or dec.B is None or not plain or refit == 0:
        return _with_codes(dec, S, codes, dec.U, dec.V, dec.B, [])
    if S.dtype != W.dtype:
        S = xp.astype(S, W.dtype)
    return _with_codes(dec, S, *_refit(problem, dec, S, codes, bits, refit))


def _refit(problem: Problem, dec: Decomposition, S: Any, codes: QuantizedMatrix, bits: int,
           refit: int) -> tuple:
    """Up to ``refit`` rounds of the binary, low-rank and code steps (module docstring) from the
    coded start (Ŝ in ``S``, ``codes``) with the mask fixed; ``S`` is left holding Ŝ of the best
    round. Returns (codes, U, V, B, history) of the round of least f, history = f of the start and
    of each round."""
    xp, W, mask = problem.xp, problem.W, dec.mask
    B = dec.B if dec.B.dtype == xp.bool else is_positive(dec.B)
    U, V, L = dec.U, dec.V, _formed(dec.U, dec.V)
    work = xp.empty_like(W)
    f_best = _objective(problem, S, U, V, L, B, work)
    best, history, spare = (codes, U, V, B), [f_best], None
    for it in range(refit):
        B = _binary_step(problem, S, U, V, L, work, spare)  # work = R ⊙ B
        U, V, _ = lowrank_step(problem, work, U.shape[1], svd="auto", seed=problem.seed + 1000 + it,
                               overwrite=True)
        L = _formed(U, V)
        codes = code_sparse(problem, lambda rows, U=U, V=V, L=L, B=B: W[rows, :] - _signed_rows(
            U, V, L, B, rows, W.dtype), mask, bits, S)
        f = _objective(problem, S, U, V, L, B, work)
        history.append(f)
        if not f < f_best:
            break
        spare = best[3] if best[3] is not dec.B else None  # the old best signs: the next round's buffer
        f_best, best = f, (codes, U, V, B)
    del work
    if best[0] is not codes:  # the last round was worse: Ŝ of the best codes again
        decode_sparse(problem, best[0], mask, S)
    return (*best, history)


def _with_codes(dec: Decomposition, S: Any, codes: QuantizedMatrix, U: Any, V: Any, B: Any,
                history: list[float]) -> Decomposition:
    return dataclasses.replace(dec, S=S, U=U, V=V, B=B, sparse_codes=codes,
                               info=dict(dec.info, sparse_refit=history))
