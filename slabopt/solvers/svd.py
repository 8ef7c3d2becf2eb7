"""Truncated SVD, low rank only (Eckart & Young 1936).

Budget: the low-rank part costs b·r·(m + n) bits; by default the solver uses the **largest rank
r* that fits the requested ratio** (b·r*·(m + n) ≤ (1 − ratio)·b·m·n) -- the ``rank`` argument of
``solve`` only has to be feasible (pass ``rank=0``). With ``fill=False`` it uses ``rank``.
``weighted=False`` (default, the classical baseline) is the plain SVD of W; ``weighted=True`` is
the exact minimiser of f over rank r*: L = SVD_r(W D) D⁻¹ (as in ASVD/SVD-LLM style methods).
"""

from __future__ import annotations

from .. import _backend as bk
from .._validation import check_choice
from ..budget import max_rank_for_ratio
from ..linalg import SVD_METHODS, truncated_svd
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..registry import register_method
from ..weight import dense_weight


@register_method(
    "svd",
    description="L only: truncated SVD at the largest rank that fits the ratio (Eckart–Young)",
    components=("lowrank",),
)
def svd(
    problem: Problem, *, fill: bool = True, weighted: bool = False, svd: str = "exact"
) -> Decomposition:
    """Best rank-r approximation of W (or of W D, mapped back, when ``weighted``)."""
    svd = check_choice("svd", svd, SVD_METHODS)
    xp, bud = problem.xp, problem.budget
    m, n = problem.shape
    r = bud.rank
    if fill and bud.requested_ratio is not None:
        r = max_rank_for_ratio((m, n), bud.requested_ratio, bud.value_bits)
    W = problem.W
    if r == 0:
        f = diagonal_objective(W, problem.d)
        return Decomposition(history=[f], message="rank 0 fits the budget: L = 0")
    target = W * problem.d if weighted else W
    P, s, Q = truncated_svd(target, r, method=svd, seed=problem.seed)
    root = xp.sqrt(s)
    U, V = P * root, Q * root
    if weighted:
        V = V * xp.reshape(problem.d_inv, (-1, 1))
    f = diagonal_objective(W - dense_weight(xp.zeros_like(W), U=U, V=V), problem.d)
    problem.report(1, f)
    return Decomposition(U=U, V=V, history=[f], message=f"rank {r} truncated SVD",
                         info={"rank": r, "weighted": weighted, "device": str(bk.device(W))})
