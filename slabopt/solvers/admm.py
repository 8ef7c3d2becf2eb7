"""ADMM on the full layer objective (docs/formulation.md §3.2, §5.5; after 3BASiL: Makni, Behdin,
Mazumder et al., "A Unified Optimization Framework for Sparse + Low-Rank Decomposition of LLMs", 2025).

Minimises g(Ŵ) = tr((W − Ŵ) H (W − Ŵ)ᵀ) over Ŵ = S + L ⊙ B in the feasible set C of the budget
(k-sparse S by pattern, rank-r L, ±1 B) with a splitting variable Z:

    min_Z ½ g(Z) + ι_C(P)   s.t.  Z = P,   P = S + L ⊙ B.

Work in the columns scaled by δ = √diag(H) (Z̃ = Z·diag(δ), H̃ = δ⁻¹Hδ⁻¹ with unit diagonal): C is
invariant under column scaling, so the P-step is the projection of Z̃ + U onto C in the plain
Frobenius norm, i.e. the δ-weighted projection in the original coordinates. Iteration (scaled
dual U, penalty ρ):

* Z-step (exact):  Z̃ = (W̃H̃ + ρ(P − U))(H̃ + ρI)⁻¹   (one eigendecomposition of H̃, reused for all ρ)
* P-step: ``inner`` warm-started block-coordinate passes of the sparse / binary / low-rank steps
  of docs/formulation.md §5.1-§5.3 on Z̃ + U (each an exact block minimiser of the distance to C);
* U += Z̃ − P.

Residuals r = ‖Z̃ − P‖_F (primal), s = ρ‖P − P_prev‖_F (dual) are recorded every iteration
(``info["primal"]``, ``info["dual"]``, ``info["rho"]``). Penalty: residual balancing (Boyd et al.
2011, §3.4.1: ×τ when r > μs, ÷τ when s > μr) times a slow growth factor that forces Z̃ − P → 0.
Stops when r ≤ ε_pri and s ≤ ε_dual (ε = ε_abs·√(mn) + ε_rel·scale) or after ``max_iter``
iterations (registered default 60).

Started from the ``alternating`` solution (``init="alternating"``, run for ``init_iter``
iterations, 20 by default), and the feasible iterate of lowest g is returned, so g never exceeds
alternating's at the same budget; ``history`` holds g of the feasible iterate P after each ADMM
iteration and ``info["g_start"]`` g of the start (both in the user's units).
"""

from __future__ import annotations

import dataclasses
import math

from .. import _backend as bk
from .._validation import check_choice, check_int, check_real
from ..linalg import truncated_svd
from ..patterns import select_mask
from ..problem import Decomposition, Problem
from ..registry import register_method
from ..signs import sign_pm1
from ._util import hessian_or_diag
from .alternating import alternating


def _g_array(xp, E, Ht):
    """g = tr(E H̃ Eᵀ) as a 0-d array on E's device."""
    return xp.sum((E @ Ht) * E)


def _g(xp, E, Ht):
    """g = tr(E H̃ Eᵀ) as a Python float."""
    return bk.to_float(_g_array(xp, E, Ht))


@register_method(
    "admm",
    description="S + L⊙B minimising the full objective g = tr(EHEᵀ) by ADMM (after 3BASiL)",
    components=("sparse", "lowrank", "binary"),
    max_iter=60,
    needs_gram=True,
)
def admm(
    problem: Problem,
    *,
    inner: int = 2,
    rho: float = 1.0,
    adaptive: bool = True,
    growth: float = 1.1,
    eps_abs: float = 1e-6,
    eps_rel: float = 1e-4,
    init: str = "alternating",
    init_iter: int = 20,
) -> Decomposition:
    """ADMM on g with blocks S, L⊙B and the split Z; returns the best feasible iterate by g."""
    init_iter = check_int("init_iter", init_iter, 1)
    inner = check_int("inner", inner, 1)
    rho = check_real("rho", rho, 1e-12)
    growth = check_real("growth", growth, 1.0)
    init = check_choice("init", init, ("alternating", "zero"))
    xp, bud = problem.xp, problem.budget
    r = bud.rank
    W = problem.W
    m, n = W.shape
    H = hessian_or_diag(problem)
    dh = xp.sqrt(xp.linalg.diagonal(H))
    Ht = H / (xp.reshape(dh, (-1, 1)) * xp.reshape(dh, (1, -1)))
    Wt = W * dh
    lam, Qe = xp.linalg.eigh(Ht)
    C = Wt @ Ht
    QeT = xp.matrix_transpose(Qe)

    # --- start: alternating's solution (mapped to the scaled coordinates) or zero
    if init == "alternating" and r > 0:
        dec0 = alternating(dataclasses.replace(problem, max_iter=init_iter))
        S = dec0.S * dh
        mask = dec0.mask
        Ut, Vt = dec0.U, dec0.V * xp.reshape(dh, (-1, 1))
        Bb = dec0.B if dec0.B.dtype != xp.bool else xp.astype(dec0.B, W.dtype) * 2 - 1
    else:
        S = xp.zeros_like(W)
        mask = select_mask(xp.zeros_like(W), bud)
        Ut = Vt = None
        Bb = sign_pm1(Wt)
    L = xp.zeros_like(W) if Ut is None else Ut @ xp.matrix_transpose(Vt)
    P = S + L * Bb
    g0 = _g(xp, Wt - P, Ht)
    best = (g0, S, mask, Ut, Vt, Bb)
    history: list[float] = []
    primal: list[float] = []
    dual: list[float] = []
    rhos: list[float] = []
    u = xp.zeros_like(W)
    Q_prev = None
    converged, message = False, problem.stop_message(False)
    for it in range(problem.max_iter):
        Z = ((C + rho * (P - u)) @ Qe) / (lam + rho) @ QeT
        target = Z + u
        P_old = P
        for j in range(inner):  # warm-started projection of Z + U onto C
            LB = L * Bb
            R = target - LB
            mask = select_mask(R * R, bud)
            S = xp.where(mask, R, xp.zeros_like(R))
            if r > 0:
                R2 = target - S
                Bb = sign_pm1(R2 * L) if Ut is not None else sign_pm1(R2)
                Pu, s, Q = truncated_svd(R2 * Bb, r, seed=problem.seed + 1000 * it + j,
                                         start=Q_prev, power_iters=2)
                root = xp.sqrt(s)
                Ut, Vt, Q_prev = Pu * root, Q * root, Q
                L = Ut @ xp.matrix_transpose(Vt)
        P = S + L * Bb
        u = u + Z - P
        # one host transfer (one GPU synchronisation) for g and every norm the stopping rule needs
        rp2, sd2, g, z2, p2, u2 = bk.to_floats(xp.stack([
            xp.sum((Z - P) ** 2), xp.sum((P - P_old) ** 2), _g_array(xp, Wt - P, Ht), xp.sum(Z * Z),
            xp.sum(P * P), xp.sum(u * u)]))
        rp, sd = math.sqrt(rp2), rho * math.sqrt(sd2)
        history.append(g)
        primal.append(rp)
        dual.append(sd)
        rhos.append(rho)
        problem.report(it + 1, g)
        if g < best[0]:
            best = (g, S, mask, Ut, Vt, Bb)
        scale = math.sqrt(mn := m * n)
        eps_pri = eps_abs * scale + eps_rel * max(math.sqrt(z2), math.sqrt(p2))
        eps_dual = eps_abs * math.sqrt(mn) + eps_rel * rho * math.sqrt(u2)
        if it > 0 and rp <= eps_pri and sd <= eps_dual:
            converged, message = True, "primal and dual residuals below tolerance"
            break
        factor = growth
        if adaptive:
            if rp > 10 * sd:
                factor *= 2
            elif sd > 10 * rp:
                factor /= 2
        rho *= factor
        u = u / factor
    g, S, mask, Ut, Vt, Bb = best
    inv = 1 / dh
    return Decomposition(
        S=S * inv, mask=mask,
        U=Ut, V=None if Vt is None else Vt * xp.reshape(inv, (-1, 1)),
        B=None if Ut is None else Bb,
        history=history, converged=converged, message=message,
        info={"primal": primal, "dual": dual, "rho": rhos, "g_start": g0 * problem.d_scale**2,
              "g_best": g * problem.d_scale**2},
    )
