"""Two "beyond the paper" variants of the alternating S + L ⊙ B solver, kept as separate
methods so that their effect is measurable at equal bits (see docs/benchmarks_solvers.md):

* ``slab_offset``: Ŵ = S + c·1ᵀ + L ⊙ B with a per-row offset c (one extra b-bit value per row,
  counted in the budget through the ``"offset"`` component, i.e. one fewer sparse value per row at
  b = 16, ι = 0). The offset makes the code generalise both L ⊙ B and the two-level code of
  Lemma 1 (rank-1 L with V = 1 and an offset gives levels c_i ± u_i). An extra exact block step,
  jointly over c and the values of S on the current mask, sets c_i to the d²-weighted mean of
  W − L ⊙ B off the mask.
* ``slab_init``: plain S + L ⊙ B, but started from the rank-r fixed point of steps 2-3 on W itself
  (B = sign(W), L = weighted rank-r SVD of |W|) instead of L ⊙ B = 0, so that the first sparse step
  already sees the binary-low-rank part.

Both use exact block minimisers of f (steps of docs/formulation.md §5, variant "weighted", exact or randomized
SVD with a no-ascent guard), so f never increases.
"""

from __future__ import annotations

from .. import _backend as bk
from .._validation import check_choice
from ..linalg import SVD_METHODS
from ..objective import diagonal_objective
from ..patterns import select_mask
from ..problem import Decomposition, Problem
from ..registry import register_method
from ..signs import sign_pm1
from .alternating import lowrank_step


def _lowrank(problem: Problem, RB, it: int, Q_prev, svd: str):
    """L = SVD_r((R ⊙ B) D) D⁻¹ as factors (U, V, Q): the low-rank step of ``alternating``."""
    return lowrank_step(problem, RB, problem.budget.rank, svd=svd, seed=problem.seed + it,
                        start=Q_prev)


def _run(problem: Problem, *, offset: bool, init: str, svd: str) -> Decomposition:
    xp, bud = problem.xp, problem.budget
    W, d = problem.W, problem.d
    r = bud.rank
    m, _ = W.shape
    zero = xp.zeros_like(W)
    c = xp.zeros((m, 1), dtype=W.dtype, device=bk.device(W))
    L = U = V = Q_prev = None
    B = sign_pm1(W)
    if init == "lowrank" and r > 0:
        U, V, Q_prev = _lowrank(problem, W * B, 10_000, None, svd)
        L = U @ xp.matrix_transpose(V)
    LB = zero if L is None else L * B
    history: list[float] = []
    converged = False
    w2 = d * d
    for it in range(problem.max_iter):
        R = W - c - LB
        mask = select_mask(R * R * w2, bud)  # sparse step (P4)
        if offset:  # exact over (c, S on the mask): weighted mean of W − L⊙B off the mask
            om = xp.where(mask, zero, xp.broadcast_to(w2, W.shape))
            tot = xp.sum(om, axis=1, keepdims=True)
            num = xp.sum(om * (W - LB), axis=1, keepdims=True)
            c = xp.where(tot > 0, num / xp.where(tot > 0, tot, xp.ones_like(tot)), c)
        S = xp.where(mask, W - c - LB, zero)
        R = W - c - S
        if r > 0:
            B = sign_pm1(R if L is None else R * L)  # binary step (P2)
            RB = R * B
            U_new, V_new, Q = _lowrank(problem, RB, it, Q_prev, svd)  # low-rank step (P3)
            L_new = U_new @ xp.matrix_transpose(V_new)
            f = diagonal_objective(RB - L_new, d)
            if L is not None:
                f_keep = diagonal_objective(RB - L, d)
                if f_keep < f:  # an inexact SVD must never undo descent
                    U_new, V_new, L_new, f = U, V, L, f_keep
            U, V, L, Q_prev = U_new, V_new, L_new, Q
            LB = L * B
        else:
            f = diagonal_objective(R, d)
        if problem.record(history, f):
            converged = True
            break
    S = xp.where(mask, W - c - LB, zero)
    return Decomposition(S=S, mask=mask, U=U, V=V, B=None if U is None else B >= 0,
                         row_offset=xp.reshape(c, (-1,)) if offset else None,
                         history=history, converged=converged,
                         message=problem.stop_message(converged))


@register_method(
    "slab_offset",
    description="S + c·1ᵀ + L⊙B: alternating with an exact per-row offset (1 value/row; ours)",
    components=("sparse", "lowrank", "binary", "offset"),
)
def slab_offset(problem: Problem, *, init: str = "zero", svd: str = "auto") -> Decomposition:
    """Alternating S + c·1ᵀ + L⊙B; ``init`` "zero" (as the paper) or "lowrank"."""
    init = check_choice("init", init, ("zero", "lowrank"))
    return _run(problem, offset=True, init=init, svd=check_choice("svd", svd, SVD_METHODS))


@register_method(
    "slab_init",
    description="S + L⊙B alternating, started from the rank-r sign fixed point of W (ours)",
    components=("sparse", "lowrank", "binary"),
)
def slab_init(problem: Problem, *, init: str = "lowrank", svd: str = "auto") -> Decomposition:
    """Alternating S + L⊙B with the chosen start ("lowrank" by default, "zero" = the paper's)."""
    init = check_choice("init", init, ("zero", "lowrank"))
    return _run(problem, offset=False, init=init, svd=check_choice("svd", svd, SVD_METHODS))
