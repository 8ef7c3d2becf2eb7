"""Robust PCA by principal component pursuit, inexact ALM (Lin, Chen & Ma, "The Augmented Lagrange
Multiplier Method for Exact Recovery of Corrupted Low-Rank Matrices", arXiv 1009.5055, 2010;
the authors' ``inexact_alm_rpca.m``).

Solves min ‖A‖_* + λ‖E‖₁ s.t. M = A + E with the authors' defaults: λ = 1/√max(m, n),
Y₀ = M / max(‖M‖₂, ‖M‖_∞/λ) (‖·‖_∞ the largest |entry|), μ₀ = 1.25/‖M‖₂, μ̄ = 10⁷·μ₀, ρ = 1.5,
stop when ‖M − A − E‖_F/‖M‖_F < tol = 1e-7 (``tol_alm``) or after ``max_iter`` iterations (the
authors' 1000, declared at registration). Each iteration:
E = shrink(M − A + Y/μ, λ/μ); A = SVT(M − E + Y/μ, 1/μ); Y += μ(M − A − E); μ = min(ρμ, μ̄).

PCP has **no fixed budget** (registered with ``fixed_budget=False``): the returned decomposition
holds what it reaches (rank(A) and nnz(E)), and ``solve`` counts exactly those bits. ``info`` also
reports the result *projected to the budget* (A truncated to rank r by its SVD, E to the k largest
|entries| per pattern): ``projected_objective`` (f in the user's units) and ``projected_bits``;
``project=True`` returns that projected decomposition instead, which meets the budget.
``weighted=True`` (default) decomposes M = W·D and maps back by D⁻¹.
"""

from __future__ import annotations

import math

from .. import _backend as bk
from .._validation import check_real
from ..budget import storage_bits
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..registry import register_method
from ..weight import dense_weight
from ._util import sparse_from_scores


def pcp_ialm(M, lam=None, *, tol=1e-7, max_iter=1000, rho=1.5, mu=None):
    """Inexact-ALM PCP of M (any array-API backend). Returns (P, s, Q, E, n_iter, errors).

    A = P diag(s) Qᵀ with s > 0 only (the singular values that survived the last shrinkage).
    """
    xp = bk.namespace(M)
    m, n = M.shape
    lam = 1 / math.sqrt(max(m, n)) if lam is None else lam
    norm_two = bk.to_float(xp.linalg.matrix_norm(M, ord=2))
    norm_inf = bk.to_float(xp.max(xp.abs(M))) / lam
    norm_fro = math.sqrt(bk.to_float(xp.sum(M * M))) or 1.0
    Y = M / max(norm_two, norm_inf)
    mu = 1.25 / norm_two if mu is None else mu
    mu_bar = mu * 1e7
    A = xp.zeros_like(M)
    E = xp.zeros_like(M)
    errors: list[float] = []
    P = Q = s = None
    zero = xp.zeros_like(M)
    n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        T = M - A + Y / mu
        E = xp.maximum(T - lam / mu, zero) + xp.minimum(T + lam / mu, zero)
        Pf, sf, Qt = xp.linalg.svd(M - E + Y / mu, full_matrices=False)
        svp = int(bk.to_float(xp.sum(xp.astype(sf > 1 / mu, xp.int64))))
        P, s, Q = Pf[:, :svp], sf[:svp] - 1 / mu, xp.matrix_transpose(Qt[:svp, :])
        A = (P * s) @ xp.matrix_transpose(Q)
        Z = M - A - E
        errors.append(math.sqrt(bk.to_float(xp.sum(Z * Z))) / norm_fro)
        if errors[-1] < tol:
            break
        Y = Y + mu * Z
        mu = min(mu * rho, mu_bar)
    return P, s, Q, E, n_iter, errors


@register_method(
    "rpca",
    description="S + L by principal component pursuit, inexact ALM (Lin, Chen & Ma 2010); no budget",
    components=("sparse", "lowrank"),
    max_iter=1000,
    fixed_budget=False,
)
def rpca(
    problem: Problem,
    *,
    lam: float | None = None,
    tol_alm: float = 1e-7,
    rho: float = 1.5,
    project: bool = False,
    weighted: bool = True,
) -> Decomposition:
    """PCP of W·D (or W); bits as reached, plus its projection to the budget in ``info``."""
    tol_alm = check_real("tol_alm", tol_alm, 0.0)
    rho = check_real("rho", rho, 1.0)
    if lam is not None:
        lam = check_real("lam", lam, 0.0)
    xp, bud = problem.xp, problem.budget
    m, n = problem.shape
    d = problem.d if weighted else xp.ones_like(problem.d)
    inv = problem.d_inv if weighted else xp.ones_like(problem.d)
    M = problem.W * d
    P, s, Q, E, n_iter, errors = pcp_ialm(M, lam, tol=tol_alm, max_iter=problem.max_iter, rho=rho)
    mask_full = E != 0
    S_full = E * inv
    rank = int(s.shape[0])
    U_full = P * s if rank else None
    V_full = Q * xp.reshape(inv, (-1, 1)) if rank else None
    reached = {"rank": rank, "nnz": int(bk.to_float(xp.sum(xp.astype(mask_full, xp.int64))))}
    # projection to the budget (r, k)
    r = min(bud.rank, rank)
    Up = P[:, :r] * s[:r]
    Vp = Q[:, :r] * xp.reshape(inv, (-1, 1))
    Sp, maskp = sparse_from_scores(problem, S_full, E * E)
    f_proj = diagonal_objective(problem.W - dense_weight(Sp, U=Up, V=Vp), problem.d)
    f_full = diagonal_objective(problem.W - dense_weight(S_full, U=U_full, V=V_full), problem.d)
    kept = int(bk.to_float(xp.sum(xp.astype(maskp, xp.int64))))
    info = {
        "reached_rank": rank, "reached_nnz": reached["nnz"],
        "reached_bits": storage_bits((m, n), reached["nnz"], rank, bud.value_bits, bud.index_bits, False,
                                     position_bits=bud.position_bits(reached["nnz"])),
        "projected_objective": f_proj * problem.d_scale**2,
        "projected_bits": storage_bits((m, n), kept, r, bud.value_bits, bud.index_bits, False,
                                       position_bits=bud.position_bits(kept)),
        "alm_iterations": n_iter, "alm_errors": errors,
    }
    if project:
        problem.report(1, f_proj)
        return Decomposition(S=Sp, mask=maskp, U=Up if r else None, V=Vp if r else None,
                             history=[f_proj], converged=errors[-1] < tol_alm,
                             message="PCP projected to the budget", info=info)
    problem.report(1, f_full)
    return Decomposition(S=S_full, mask=mask_full, U=U_full, V=V_full, history=[f_full],
                         converged=errors[-1] < tol_alm,
                         message=f"PCP: {n_iter} ALM iterations, rank {rank}, "
                                 f"nnz {reached['nnz']} (no fixed budget)", info=info)
