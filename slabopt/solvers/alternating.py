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

from .. import _backend as bk
from ..budget import check_int
from ..linalg import SVD_METHODS, truncated_svd
from ..patterns import select_mask
from ..problem import Decomposition, Problem, check_choice
from ..registry import register_method
from ..signs import sign_pm1

VARIANTS = ("weighted", "paper")


def sparse_mask(problem: Problem, LB, out=None):
    """Mask of the entries S keeps: the largest |R_ij|·d_j of R = W − L ⊙ B per pattern (P4).

    Ranks by the squares (R_ij d_j)², the same order; ``out`` is an optional m×n work buffer.
    """
    scores = problem.W - LB if out is None else out
    if out is not None:
        scores[...] = problem.W
        scores -= LB
    scores *= scores
    scores *= problem.d * problem.d
    return select_mask(scores, problem.budget)


def sparse_step(problem: Problem, LB):
    """S = mask ⊙ R for R = W − L ⊙ B, keeping the largest |R_ij|·d_j (P4). Returns (S, mask)."""
    xp = problem.xp
    mask = sparse_mask(problem, LB)
    return xp.where(mask, problem.W - LB, xp.zeros_like(LB)), mask


def positive_signs(R, L):
    """Boolean B = +1 of the binary step: R ⊙ L ≥ 0, or R ≥ 0 before any L exists (P2)."""
    return R >= 0 if L is None else R * L >= 0


def binary_step(R, L):
    """B = sign(R ⊙ L), or sign(R) before any L exists (P2); sign(0) = +1."""
    return sign_pm1(R if L is None else R * L)


def outer(U, V):
    """L = U Vᵀ (a broadcast product for rank 1, where GEMM is slow)."""
    xp = bk.namespace(U)
    if U.shape[1] == 1:
        return U * xp.reshape(V, (1, -1))
    return U @ xp.matrix_transpose(V)


def weighted_error(problem: Problem, RB, L, out=None) -> float:
    """‖(R ⊙ B − L) D‖_F², equal to ‖(R − L ⊙ B) D‖_F² by the sign isometry (P1)."""
    xp = problem.xp
    if out is None:
        E = RB - L
    else:
        E = out
        E[...] = RB
        E -= L
    E *= problem.d
    return bk.to_float(xp.linalg.vecdot(xp.reshape(E, (-1,)), xp.reshape(E, (-1,))))


def lowrank_step(
    problem: Problem,
    RB,
    rank: int,
    *,
    weighted: bool = True,
    svd: str = "exact",
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    start=None,
):
    """L = SVD_r((R ⊙ B) D) D⁻¹ (P3; ``weighted=False``: L = SVD_r(R ⊙ B)), as factors.

    Returns (U, V, Q): L = U Vᵀ with U = P Σ^½, V = D⁻¹ Q Σ^½ (columns of dead inputs are 0),
    and Q, the right singular vectors, to warm-start the next sketch.
    """
    xp = problem.xp
    target = RB * problem.d if weighted else RB
    P, s, Q = truncated_svd(
        target,
        rank,
        method=svd,
        oversample=oversample,
        power_iters=power_iters,
        seed=seed,
        start=start,
    )
    root = xp.sqrt(s)
    V = Q * root
    if weighted:
        V = V * xp.reshape(problem.d_inv, (-1, 1))
    return P * root, V, Q


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

    W = problem.W
    LB = xp.zeros_like(W)
    work = xp.empty_like(W)  # reused m×n buffers: scores, then R ⊙ B; error terms
    spare = xp.empty_like(W)
    L = U = V = Q_prev = None
    history: list[float] = []
    converged, message = False, f"max_iter = {problem.max_iter} iterations reached"
    for it in range(problem.max_iter):
        mask = sparse_mask(problem, LB, out=work)
        LB_kept = LB  # S = mask ⊙ (W − LB_kept), formed once at the end
        R = LB - W  # R = W − S = W + mask ⊙ (LB − W), built in place
        R *= mask
        R += W
        positive = positive_signs(R, L)
        B = xp.astype(positive, W.dtype)
        B *= 2
        B -= 1
        RB = work
        RB[...] = R
        RB *= B  # R ⊙ B
        del R
        U_new, V_new, Q = lowrank_step(
            problem,
            RB,
            r,
            weighted=weighted,
            svd=svd,
            oversample=oversample,
            power_iters=power_iters,
            seed=problem.seed + it,
            start=Q_prev if warm_start else None,
        )
        L_new = outer(U_new, V_new)
        f = weighted_error(problem, RB, L_new, out=spare)
        if weighted and L is not None:
            f_keep = weighted_error(problem, RB, L, out=spare)
            if f_keep < f:  # an inexact (randomized) SVD must never undo descent
                L_new, U_new, V_new, f = L, U, V, f_keep
        L, U, V, Q_prev = L_new, U_new, V_new, Q
        LB = L * B
        history.append(f)
        problem.report(it + 1, f)
        if problem.stalled(history):
            converged = True
            message = f"relative objective change <= tol = {problem.tol:g}"
            break
    S = work
    S[...] = W
    S -= LB_kept
    S *= mask
    return Decomposition(
        S=S,
        mask=mask,
        U=U,
        V=V,
        B=positive,
        history=history,
        converged=converged,
        message=message,
    )
