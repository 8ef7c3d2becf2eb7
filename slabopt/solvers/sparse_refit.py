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
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..linalg import outer
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..quantized import QuantizedMatrix
from ..signs import pm1_from_positive
from ..sparse_codes import sparse_codes
from .alternating import binary_step, lowrank_step


def code_sparse(problem: Problem, E: Any, mask: Any, bits: int) -> tuple[Any, QuantizedMatrix]:
    """(Ŝ, codes): the entries of E on ``mask`` (k per row) as q-bit codes with weights d_j², and
    the dense m×n Ŝ they decode to."""
    xp = problem.xp
    m = problem.shape[0]
    k = problem.budget.nnz_per_row
    values = xp.reshape(E[mask], (m, k))
    cols = xp.reshape(xp.nonzero(mask)[1], (m, k))
    d2 = problem.d * problem.d
    weights = xp.reshape(xp.take(d2, xp.reshape(cols, (-1,)), axis=0), (m, k))
    codes = sparse_codes(values, weights, bits, problem.budget.value_bits)
    S = xp.zeros_like(E)
    S[mask] = xp.reshape(codes.dequantize(E.dtype), (-1,))
    return S, codes


def _lowrank_signed(U: Any, V: Any, B: Any) -> Any:
    return outer(U, V) * B


def quantize_sparse_part(problem: Problem, dec: Decomposition, bits: int, refit: int = 2) -> Decomposition:
    """``dec`` with the values of S as q-bit codes (``sparse_codes``), L ⊙ B refitted by up to
    ``refit`` rounds when the method stores exactly S + L ⊙ B (module docstring);
    ``info["sparse_refit"]`` holds f of the coded start and after each round."""
    xp, W, d = problem.xp, problem.W, problem.d
    if dec.mask is None or problem.budget.nnz == 0:
        return dec
    mask = dec.mask
    S, codes = code_sparse(problem, dec.S, mask, bits)
    plain = dec.levels is None and dec.row_offset is None and dec.quant is None
    if dec.U is None or dec.B is None or not plain or refit == 0:
        return _with_codes(dec, S, codes, dec.U, dec.V, dec.B, [])
    B = pm1_from_positive(dec.B, W.dtype) if dec.B.dtype == xp.bool else dec.B
    U, V = dec.U, dec.V
    LB = _lowrank_signed(U, V, B)
    f_best = diagonal_objective(W - S - LB, d)
    best, history = (S, codes, U, V, B), [f_best]
    for it in range(refit):
        R = W - S
        B = binary_step(R, outer(U, V))
        U, V, _ = lowrank_step(problem, R * B, U.shape[1], svd="auto", seed=problem.seed + 1000 + it)
        LB = _lowrank_signed(U, V, B)
        S, codes = code_sparse(problem, W - LB, mask, bits)
        f = diagonal_objective(W - S - LB, d)
        history.append(f)
        if not f < f_best:
            break
        f_best, best = f, (S, codes, U, V, B)
    return _with_codes(dec, *best, history)


def _with_codes(dec: Decomposition, S: Any, codes: QuantizedMatrix, U: Any, V: Any, B: Any,
                history: list[float]) -> Decomposition:
    return dataclasses.replace(dec, S=S, U=U, V=V, B=B, sparse_codes=codes,
                               info=dict(dec.info, sparse_refit=history))

