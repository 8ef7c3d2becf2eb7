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
from typing import Any, NamedTuple

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


class _Scaled(NamedTuple):
    """The problem in the columns scaled by δ = √diag(H): W̃ = W·diag(δ), H̃ = δ⁻¹Hδ⁻¹ = Q Λ Qᵀ (unit
    diagonal), and C = W̃H̃, the constant part of the Z-step."""

    dh: Any  # δ
    Ht: Any  # H̃
    Wt: Any  # W̃
    lam: Any  # Λ
    Qe: Any  # Q
    QeT: Any  # Qᵀ
    C: Any  # W̃H̃


@dataclasses.dataclass
class _Iterate:
    """The feasible point P = S + L ⊙ B of the P-step in the scaled coordinates: S on ``mask``,
    L = U Vᵀ (``U``, ``V`` ``None`` and L = 0 before any low-rank step), B the ±1 signs. The
    P-step replaces its parts one by one (each old part is released as soon as it is replaced)."""

    S: Any
    mask: Any
    U: Any
    V: Any
    B: Any
    L: Any

    @property
    def P(self) -> Any:
        """P = S + L ⊙ B."""
        return self.S + self.L * self.B

    def parts(self) -> tuple:
        """(S, mask, U, V, B), what the best iterate keeps."""
        return self.S, self.mask, self.U, self.V, self.B


def _scaled(problem: Problem) -> _Scaled:
    """δ, H̃, W̃, the eigendecomposition of H̃ (reused for every ρ) and C = W̃H̃."""
    xp = problem.xp
    H = hessian_or_diag(problem)
    dh = xp.sqrt(xp.linalg.diagonal(H))
    Ht = H / (xp.reshape(dh, (-1, 1)) * xp.reshape(dh, (1, -1)))
    Wt = problem.W * dh
    lam, Qe = xp.linalg.eigh(Ht)
    C = Wt @ Ht
    QeT = xp.matrix_transpose(Qe)
    return _Scaled(dh, Ht, Wt, lam, Qe, QeT, C)


def _start(problem: Problem, sc: _Scaled, init: str, init_iter: int) -> _Iterate:
    """The start: alternating's solution after ``init_iter`` iterations mapped to the scaled
    coordinates (S·diag(δ), V·diag(δ)), or S = 0, L = 0, B = sign(W̃) (``init="zero"`` or rank 0)."""
    xp, W = problem.xp, problem.W
    if init == "alternating" and problem.budget.rank > 0:
        dec0 = alternating(dataclasses.replace(problem, max_iter=init_iter))
        S = dec0.S * sc.dh
        mask = dec0.mask
        Ut, Vt = dec0.U, dec0.V * xp.reshape(sc.dh, (-1, 1))
        Bb = dec0.B if dec0.B.dtype != xp.bool else xp.astype(dec0.B, W.dtype) * 2 - 1
    else:
        S = xp.zeros_like(W)
        mask = select_mask(xp.zeros_like(W), problem.budget)
        Ut = Vt = None
        Bb = sign_pm1(sc.Wt)
    L = xp.zeros_like(W) if Ut is None else Ut @ xp.matrix_transpose(Vt)
    return _Iterate(S, mask, Ut, Vt, Bb, L)


def _project(problem: Problem, target: Any, x: _Iterate, it: int, inner: int, Q_prev: Any) -> Any:
    """P-step, in place on ``x``: ``inner`` warm-started passes of the sparse (S = top-k of T − L⊙B),
    binary (B = sign((T − S) ⊙ L)) and low-rank (L = SVD_r((T − S) ⊙ B)) block steps towards the
    target T = Z̃ + U. Returns the right singular vectors that warm-start the next SVD."""
    xp, bud = problem.xp, problem.budget
    r = bud.rank
    for j in range(inner):
        LB = x.L * x.B
        R = target - LB
        x.mask = select_mask(R * R, bud)
        x.S = xp.where(x.mask, R, xp.zeros_like(R))
        if r > 0:
            R2 = target - x.S
            x.B = sign_pm1(R2 * x.L) if x.U is not None else sign_pm1(R2)
            Pu, s, Q = truncated_svd(R2 * x.B, r, seed=problem.seed + 1000 * it + j,
                                     start=Q_prev, power_iters=2)
            root = xp.sqrt(s)
            x.U, x.V, Q_prev = Pu * root, Q * root, Q
            x.L = x.U @ xp.matrix_transpose(x.V)
    return Q_prev


def _measures(xp: Any, sc: _Scaled, Z: Any, P: Any, P_old: Any, u: Any, rho: float) -> tuple:
    """(g, r, s, ‖Z̃‖, ‖P‖, ‖U‖): g of P, the primal residual r = ‖Z̃ − P‖_F, the dual residual
    s = ρ‖P − P_prev‖_F and the norms of the stopping rule, with one host transfer (one GPU
    synchronisation)."""
    rp2, sd2, g, z2, p2, u2 = bk.to_floats(xp.stack([
        xp.sum((Z - P) ** 2), xp.sum((P - P_old) ** 2), _g_array(xp, sc.Wt - P, sc.Ht), xp.sum(Z * Z),
        xp.sum(P * P), xp.sum(u * u)]))
    return g, math.sqrt(rp2), rho * math.sqrt(sd2), math.sqrt(z2), math.sqrt(p2), math.sqrt(u2)


def _small(shape: tuple[int, int], rp: float, sd: float, z: float, p: float, u: float, rho: float,
           eps_abs: float, eps_rel: float) -> bool:
    """r ≤ ε_pri = ε_abs·√(mn) + ε_rel·max(‖Z̃‖, ‖P‖) and s ≤ ε_dual = ε_abs·√(mn) + ε_rel·ρ‖U‖."""
    m, n = shape
    scale = math.sqrt(mn := m * n)
    eps_pri = eps_abs * scale + eps_rel * max(z, p)
    eps_dual = eps_abs * math.sqrt(mn) + eps_rel * rho * u
    return rp <= eps_pri and sd <= eps_dual


def _penalty_factor(rp: float, sd: float, growth: float, adaptive: bool) -> float:
    """The factor ρ is multiplied by: ``growth``, times 2 when r > 10s and ÷ 2 when s > 10r
    (residual balancing, with ``adaptive``)."""
    factor = growth
    if adaptive:
        if rp > 10 * sd:
            factor *= 2
        elif sd > 10 * rp:
            factor /= 2
    return factor


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
    sc = _scaled(problem)
    x = _start(problem, sc, init, init_iter)
    g0 = _g(problem.xp, sc.Wt - x.P, sc.Ht)
    best, trace, converged = _iterate(problem, sc, x, g0, inner=inner, rho=rho, adaptive=adaptive,
                                      growth=growth, eps_abs=eps_abs, eps_rel=eps_rel)
    return _decomposition(problem, sc, best, g0, trace, converged)


def _iterate(problem: Problem, sc: _Scaled, x: _Iterate, g0: float, *, inner: int, rho: float,
             adaptive: bool, growth: float, eps_abs: float, eps_rel: float) -> tuple[tuple, dict, bool]:
    """The ADMM iterations from ``x`` (of g = ``g0``): Z-step, P-step, dual update, then the stopping
    rule and the penalty update. Returns (g, S, mask, U, V, B) of the feasible iterate of least g,
    the trace (g, primal and dual residuals and ρ of every iteration) and whether it converged."""
    xp = problem.xp
    P = x.P
    best = (g0, *x.parts())
    trace: dict[str, list[float]] = {"history": [], "primal": [], "dual": [], "rho": []}
    u = xp.zeros_like(problem.W)
    Q_prev = None
    for it in range(problem.max_iter):
        Z = ((sc.C + rho * (P - u)) @ sc.Qe) / (sc.lam + rho) @ sc.QeT
        P_old = P
        Q_prev = _project(problem, Z + u, x, it, inner, Q_prev)  # warm-started projection onto C
        P = x.P
        u = u + Z - P
        g, rp, sd, z, p, u_norm = _measures(xp, sc, Z, P, P_old, u, rho)
        for key, value in zip(trace, (g, rp, sd, rho), strict=True):
            trace[key].append(value)
        problem.report(it + 1, g)
        if g < best[0]:
            best = (g, *x.parts())
        if it > 0 and _small(problem.shape, rp, sd, z, p, u_norm, rho, eps_abs, eps_rel):
            return best, trace, True
        factor = _penalty_factor(rp, sd, growth, adaptive)
        rho *= factor
        u = u / factor
    return best, trace, False


def _decomposition(problem: Problem, sc: _Scaled, best: tuple, g0: float, trace: dict,
                   converged: bool) -> Decomposition:
    """The best iterate mapped back to the original columns (S·diag(δ)⁻¹, V·diag(δ)⁻¹), with g of
    the start and of the best iterate in the user's units."""
    xp = problem.xp
    g, S, mask, Ut, Vt, Bb = best
    inv = 1 / sc.dh
    message = "primal and dual residuals below tolerance" if converged else problem.stop_message(False)
    return Decomposition(
        S=S * inv, mask=mask,
        U=Ut, V=None if Vt is None else Vt * xp.reshape(inv, (-1, 1)),
        B=None if Ut is None else Bb,
        history=trace["history"], converged=converged, message=message,
        info={"primal": trace["primal"], "dual": trace["dual"], "rho": trace["rho"],
              "g_start": g0 * problem.d_scale**2, "g_best": g * problem.d_scale**2},
    )
