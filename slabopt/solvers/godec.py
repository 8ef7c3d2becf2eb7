"""GoDec (Zhou & Tao, "GoDec: Randomized Low-rank & Sparse Matrix Decomposition in Noisy Case",
ICML 2011; the authors' MATLAB ``GoDec.m``).

Decomposes M = L + S + G with rank(L) ≤ r and card(S) ≤ k. Port of ``GoDec.m``: L₀ = M, S₀ = 0;
each iteration updates L by bilateral random projection (BRP, ``power`` extra power steps,
Y₂ = (LᵀL)^{power+1}·Ω, Q = qr(Y₂), L ← L Q Qᵀ), then S = the k largest |M − L| (hard top-k under
the budget's pattern: per row by default, "global" for the original), then L ← M − S.
Stopping rule (relative): ‖M − L − S‖_F / ‖M‖_F < ``error_bound`` (1e-3, the authors' value,
made relative), or its relative change ≤ tol (:meth:`Problem.stalled`), or ``max_iter`` iterations
(the authors' 100, declared at registration).
``weighted=True`` (default) decomposes M = W·D so that it minimises f, and maps back.
"""

from __future__ import annotations

import math

from .. import _backend as bk
from .._validation import check_int, check_real
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..registry import register_method
from ._util import sparse_from_scores


@register_method(
    "godec",
    description="S + L by GoDec: bilateral random projections + hard top-k (Zhou & Tao 2011)",
    components=("sparse", "lowrank"),
    max_iter=100,
)
def godec(
    problem: Problem,
    *,
    power: int = 2,
    error_bound: float = 1e-3,
    weighted: bool = True,
) -> Decomposition:
    """GoDec at the budget's (r, k); history = ‖M − L − S‖_F² after each iteration."""
    power = check_int("power", power, 0)
    error_bound = check_real("error_bound", error_bound, 0.0)
    xp, bud = problem.xp, problem.budget
    r = bud.rank
    d = problem.d if weighted else xp.ones_like(problem.d)
    M = problem.W * d
    n = M.shape[1]
    norm_m = math.sqrt(bk.to_float(xp.sum(M * M))) or 1.0
    L = xp.asarray(M, copy=True)
    S = xp.zeros_like(M)
    mask = None
    U = V = None
    history: list[float] = []
    converged, message = False, problem.stop_message(False)
    for it in range(problem.max_iter):
        if r > 0:
            Y2 = bk.random_normal((n, r), problem.seed + it, M, M.dtype)
            for _ in range(power + 1):
                Y1 = L @ Y2
                Y2 = xp.matrix_transpose(L) @ Y1
            Q, _ = xp.linalg.qr(Y2)
            U, V = L @ Q, Q
            L_new = U @ xp.matrix_transpose(Q)
        else:
            L_new = xp.zeros_like(M)
        T = L - L_new + S  # = M − L_new
        L = L_new
        S, mask = sparse_from_scores(problem, T, T * T)
        E = T - S
        err2 = bk.to_float(xp.sum(E * E))
        stalled = problem.record(history, err2 if weighted else diagonal_objective(E, problem.d))
        if math.sqrt(err2) / norm_m < error_bound:
            converged, message = True, f"relative error < error_bound = {error_bound:g}"
            break
        if stalled:
            converged, message = True, problem.stop_message(True)
            break
        L = L + E
    inv = problem.d_inv if weighted else xp.ones_like(problem.d)
    S = S * inv
    if U is not None:
        V = V * xp.reshape(inv, (-1, 1))
    return Decomposition(S=S, mask=mask, U=U, V=V, history=history, converged=converged,
                         message=message)
