"""OATS (Zhang, Papyan et al., "OATS: Outlier-Aware Pruning Through Sparse and Low Rank
Decomposition", ICLR 2025; arXiv 2409.13652, Algorithm 1).

Scale W by D = diag(‖X_j‖₂), then alternate (starting from S = 0) ``max_iter`` times (the
authors' default 80, declared at registration):  L = SVD_r(W D − S);  S = HardThreshold(W D − L, k)
-- the hard threshold is row-wise (per output, as in Wanda) for the default "row" pattern, global or
N:M otherwise; finally
Ŵ = (S + L) D⁻¹. Same (r, k) accounting as SLaB without B. Stops early when the relative change of
the objective is ≤ ``tol``.
"""

from __future__ import annotations

from .. import _backend as bk
from .._validation import check_choice
from ..linalg import SVD_METHODS, truncated_svd
from ..problem import Decomposition, Problem
from ..registry import register_method
from ._util import sparse_from_scores


@register_method(
    "oats",
    description="S + L on W·D by alternating hard thresholding and truncated SVD (OATS, 2025)",
    components=("sparse", "lowrank"),
    max_iter=80,
)
def oats(
    problem: Problem, *, svd: str = "auto", power_iters: int = 2,
) -> Decomposition:
    """OATS Algorithm 1 at the budget's (r, k); history = f after each iteration."""
    svd = check_choice("svd", svd, SVD_METHODS)
    xp, bud = problem.xp, problem.budget
    d, r = problem.d, bud.rank
    M = problem.W * d
    S = xp.zeros_like(M)
    mask = None
    history: list[float] = []
    U = V = None
    converged = False
    for it in range(problem.max_iter):
        if r > 0:
            P, s, Q = truncated_svd(M - S, r, method=svd, power_iters=power_iters,
                                    seed=problem.seed + it)
            U, V = P * s, Q
            L = U @ xp.matrix_transpose(V)
        else:
            L = xp.zeros_like(M)
        R = M - L
        S, mask = sparse_from_scores(problem, R, R * R)
        E = R - S
        if problem.record(history, bk.to_float(xp.sum(E * E))):
            converged = True
            break
    d_inv = problem.d_inv
    S = S * d_inv
    if U is not None:
        V = V * xp.reshape(d_inv, (-1, 1))
    return Decomposition(S=S, mask=mask, U=U, V=V, history=history, converged=converged,
                         message=problem.stop_message(converged))
