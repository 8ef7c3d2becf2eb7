"""The alternating S + L ⊙ B solver (SPEC §3, the SLaB paper's Algorithm 1 as reconstructed).

Starting from L ⊙ B = 0, each iteration runs three block updates of the diagonal objective
f = ‖(W − S − L ⊙ B) D‖_F²:

1. sparse step  (P4): R = W − L ⊙ B; keep the per-pattern largest |R_ij|·d_j; S = mask ⊙ R
2. binary step  (P2): R = W − S; B = sign(R ⊙ L)   (first iteration: B = sign(R))
3. low-rank step(P3): L = SVD_r((R ⊙ B) D) D⁻¹      (``variant="paper"``: L = SVD_r(R ⊙ B))

With ``variant="weighted"`` every step is an exact block minimiser, so f never increases
(the descent corollary); a randomized SVD is only accepted when it does not raise f.
"""

from __future__ import annotations

import math

from .. import _backend as bk
from ..linalg import SVD_METHODS, truncated_svd
from ..patterns import select_mask
from ..problem import Decomposition, Problem, check_choice, check_real
from ..budget import check_int
from ..registry import register_method
from ..signs import sign_pm1

VARIANTS = ("weighted", "paper")


def sparse_step(problem: Problem, LB):
    """S = mask ⊙ R for R = W − L ⊙ B, keeping the largest |R_ij|·d_j (P4)."""
    xp = problem.xp
    R = problem.W - LB
    mask = select_mask(xp.abs(R) * problem.d, problem.budget)
    return xp.where(mask, R, xp.zeros_like(R)), mask


def binary_step(R, L):
    """B = sign(R ⊙ L), or sign(R) before any L exists (P2); sign(0) = +1."""
    return sign_pm1(R if L is None else R * L)


def weighted_error(problem: Problem, RB, L) -> float:
    """‖(R ⊙ B − L) D‖_F², equal to ‖(R − L ⊙ B) D‖_F² by the sign isometry (P1)."""
    xp = problem.xp
    return bk.to_float(xp.sum(((RB - L) * problem.d) ** 2))


@register_method(
    "alternating",
    description="S + L⊙B by exact block coordinate descent on ‖(W − Ŵ)D‖² (SLaB, Algorithm 1)",
    components=("sparse", "lowrank", "binary"),
)
def alternating(
    problem: Problem,
    *,
    variant: str = "weighted",
    svd: str = "auto",
    power_iters: int = 2,
    oversample: int = 10,
    warm_start: bool = True,
) -> Decomposition:
    """Alternate the sparse, binary and low-rank steps of SPEC §3.

    Options
    -------
    variant : "weighted" (default; L = SVD_r((R⊙B)D)D⁻¹, monotone) or "paper" (unweighted SVD)
    svd : "auto" (randomized when r + p ≤ min(m, n)/4), "exact" or "randomized"
    power_iters, oversample : randomized range finder settings (q and p)
    warm_start : start each sketch from the previous iteration's right singular vectors
    """
    variant = check_choice("variant", variant, VARIANTS)
    svd = check_choice("svd", svd, SVD_METHODS)
    power_iters = check_int("power_iters", power_iters, 0)
    oversample = check_int("oversample", oversample, 0)
    xp, budget, d = problem.xp, problem.budget, problem.d
    r = budget.rank
    weighted = variant == "weighted"

    if r == 0:  # nothing to alternate with: one exact sparse step
        S, mask = sparse_step(problem, xp.zeros_like(problem.W))
        f = bk.to_float(xp.sum(((problem.W - S) * d) ** 2))
        problem.report(1, f)
        return Decomposition(S=S, mask=mask, history=[f], message="rank 0: sparse step only")

    d_inv = problem.d_inv
    LB = xp.zeros_like(problem.W)
    L = U = V = Q_prev = None
    history: list[float] = []
    converged, message = False, f"max_iter = {problem.max_iter} iterations reached"
    for it in range(problem.max_iter):
        S, mask = sparse_step(problem, LB)
        R = problem.W - S
        B = binary_step(R, L)
        RB = R * B
        target = RB * d if weighted else RB
        P, s, Q = truncated_svd(
            target,
            r,
            method=svd,
            oversample=oversample,
            power_iters=power_iters,
            seed=problem.seed + it,
            start=Q_prev if warm_start else None,
        )
        root = xp.sqrt(s)
        U_new = P * root
        V_new = Q * root
        if weighted:
            V_new = V_new * xp.reshape(d_inv, (-1, 1))
        L_new = U_new @ xp.matrix_transpose(V_new)
        f = weighted_error(problem, RB, L_new)
        if weighted and L is not None:
            f_keep = weighted_error(problem, RB, L)
            if f_keep < f:  # an inexact (randomized) SVD must never undo descent
                L_new, U_new, V_new, f = L, U, V, f_keep
        L, U, V, Q_prev = L_new, U_new, V_new, Q
        LB = L * B
        history.append(f)
        problem.report(it + 1, f)
        if it > 0 and abs(history[-2] - f) <= problem.tol * max(history[-2], math.ulp(1.0)):
            converged = True
            message = f"relative objective change <= tol = {problem.tol:g}"
            break
    return Decomposition(
        S=S, mask=mask, U=U, V=V, B=B, history=history, converged=converged, message=message
    )
