"""The alternating S + L ⊙ B solver (docs/formulation.md §5, the SLaB paper's Algorithm 1
as reconstructed).

Starting from L ⊙ B = 0, each iteration runs three block updates of the diagonal objective
f = ‖(W − S − L ⊙ B) D‖_F²:

1. sparse step  (P4): E = W − L ⊙ B; keep the per-pattern largest |E_ij|·d_j; S = mask ⊙ E
2. binary step  (P2): R = W − S; B = sign(R ⊙ L)   (first iteration: B = sign(R))
3. low-rank step(P3): L = SVD_r((R ⊙ B) D) D⁻¹      (``variant="paper"``: L = SVD_r(R ⊙ B))

With ``variant="weighted"`` every step is an exact block minimiser, so f never increases
(the descent corollary); a randomized SVD is only accepted when it does not raise f.
The loop works in four reused m×n buffers and evaluates f from the factors (see
:func:`weighted_objectives`), so one iteration costs about a dozen m×n passes plus the SVD.

On NumPy CPU arrays with the "row" pattern, when numba is installed, the sparse, binary and
SVD-target steps of an iteration run as one pass over the rows instead (the kernels beside this
module, :mod:`slabopt.solvers._alternating_kernels`, option ``kernel``); it performs the same
floating-point operations, so the iterates are the reference loop's bit for bit. Everything else
(the SVD, the objectives, the descent safeguard: :func:`lowrank_update`) is shared by both loops.
"""

from __future__ import annotations

from typing import Any

from .. import _backend as bk
from .._validation import check_choice, check_int
from ..linalg import SVD_METHODS, outer, truncated_svd
from ..objective import diagonal_objective
from ..patterns import select_mask
from ..problem import Decomposition, Problem
from ..registry import register_method
from ..signs import sign_pm1, sign_pm1_into
from . import _alternating_kernels as _kernels

VARIANTS = ("weighted", "paper")
KERNELS = ("auto", "numba", "numpy")


def sparse_mask(problem: Problem, E, out=None, work=None):
    """Mask of the entries S keeps: the per-pattern largest |E_ij|·d_j of E = W − L ⊙ B (P4).

    Ranks by the squares (E_ij d_j)², the same order; ``out`` is an optional m×n buffer for the
    scores and ``work`` one for the selection (``E`` itself is not modified).
    """
    scores = problem.xp.empty_like(E) if out is None else out
    scores[...] = E
    scores *= problem.d
    scores *= scores
    return select_mask(scores, problem.budget, work)


def sparse_step(problem: Problem, LB):
    """S = mask ⊙ E for E = W − L ⊙ B, keeping the largest |E_ij|·d_j (P4). Returns (S, mask)."""
    xp = problem.xp
    E = problem.W - LB
    mask = sparse_mask(problem, E)
    return xp.where(mask, E, xp.zeros_like(E)), mask


def binary_step(R, L):
    """B = sign(R ⊙ L), or sign(R) before any L exists (P2); sign(0) = +1."""
    return sign_pm1(R if L is None else R * L)


def multiply_by_lowrank(A, U, V, L=None):
    """A ← A ⊙ (U Vᵀ) in place; ``L`` is U Vᵀ when already formed (rank > 1).

    For rank 1 two broadcast products, no m×n temporary.
    """
    xp = bk.namespace(A)
    if U.shape[1] == 1:
        A *= U
        A *= xp.reshape(V, (1, -1))
    else:
        A *= outer(U, V) if L is None else L
    return A


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


def squared_norm_array(M):
    """‖M‖_F² with per-row dot products summed in float64 (accurate enough to subtract from), as a
    0-d float64 array on M's device."""
    xp = bk.namespace(M)
    rows = xp.linalg.vecdot(M, M, axis=-1)
    return xp.sum(xp.astype(rows, xp.float64))


def squared_norm(M) -> float:
    """:func:`squared_norm_array` as a Python float."""
    return bk.to_float(squared_norm_array(M))


def factored_errors(M, norm2, factors) -> list:
    """‖M − U (DV)ᵀ‖_F² = ‖M‖² − 2⟨U, M·DV⟩ + ⟨UᵀU, (DV)ᵀDV⟩ for each (U, DV) in ``factors``.

    ``norm2`` = ‖M‖_F² (0-d float64 array). One skinny product M·[DV₁ DV₂ …] (one pass over M)
    replaces the m×n passes of forming each U (DV)ᵀ; the small terms are summed in float64. The
    values stay 0-d float64 arrays on M's device (no host transfer).
    """
    xp = bk.namespace(M)
    f64 = xp.float64
    MDV = M @ xp.concat([DV for _, DV in factors], axis=1)
    out, col = [], 0
    for U, DV in factors:
        r = U.shape[1]
        cross = xp.sum(xp.astype(U * MDV[:, col : col + r], f64))
        gram = xp.astype(xp.matrix_transpose(U) @ U, f64) * xp.astype(
            xp.matrix_transpose(DV) @ DV, f64
        )
        out.append(norm2 - 2.0 * cross + xp.sum(gram))
        col += r
    return out


CANCELLATION = 1e-2  # below f < CANCELLATION·‖M‖² the objectives are evaluated explicitly


def explicit_error(M, U, DV, out) -> float:
    """‖M − U (DV)ᵀ‖_F², formed in the m×n buffer ``out``."""
    out[...] = M
    out -= outer(U, DV)
    return squared_norm(out)


def weighted_objectives(problem: Problem, M, new, old, out) -> tuple[float, bool]:
    """(f, keep): f = ‖(R⊙B − L)D‖² of the better of the ``new`` and the ``old`` factors (U, V).

    With M = (R⊙B)D, f(U, V) = ‖M − U(DV)ᵀ‖² (P1), evaluated from the factors by
    :func:`factored_errors`. Values below ``CANCELLATION``·‖M‖² (where the subtraction loses
    digits) are recomputed explicitly in the m×n buffer ``out``. ``old`` is ``None`` in the
    first iteration; ``keep`` says the old factors are better, which only an inexact
    (randomized) SVD can cause.
    """
    xp = problem.xp
    d = xp.reshape(problem.d, (-1, 1))
    pairs = [(U, V * d) for U, V in ([new] if old is None else [new, old])]
    norm2 = squared_norm_array(M)
    # one host transfer (one GPU synchronisation) for ‖M‖² and every candidate's objective
    norm2, *values = bk.to_floats(xp.stack([norm2, *factored_errors(M, norm2, pairs)]))
    if min(values) < CANCELLATION * norm2:
        values = [explicit_error(M, U, DV, out) for U, DV in pairs]
    keep = len(values) == 2 and values[1] < values[0]
    return min(values), keep


def svd_target(problem: Problem, RB, *, weighted: bool = True, overwrite: bool = False):
    """M = (R ⊙ B) D for the weighted variant, R ⊙ B for the paper variant (docs/formulation.md §5.3).

    ``overwrite=True`` scales ``RB`` in place.
    """
    if not weighted:
        return RB
    if overwrite:
        RB *= problem.d
        return RB
    return RB * problem.d


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
    overwrite: bool = False,
):
    """L = SVD_r((R ⊙ B) D) D⁻¹ (P3; ``weighted=False``: L = SVD_r(R ⊙ B)), as factors.

    Returns (U, V, Q): L = U Vᵀ with U = P Σ^½, V = D⁻¹ Q Σ^½ (columns of dead inputs are 0),
    and Q, the right singular vectors, to warm-start the next sketch. ``overwrite=True`` turns
    ``RB`` into the SVD target M of :func:`svd_target` in place.
    """
    M = svd_target(problem, RB, weighted=weighted, overwrite=overwrite)
    return lowrank_factors(problem, M, rank, weighted=weighted, svd=svd, oversample=oversample,
                           power_iters=power_iters, seed=seed, start=start)


def lowrank_factors(
    problem: Problem,
    M,
    rank: int,
    *,
    weighted: bool = True,
    svd: str = "exact",
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    start=None,
):
    """(U, V, Q) of :func:`lowrank_step` from the SVD target M itself: M ≈ P Σ Qᵀ (rank r),
    U = P Σ^½, V = Q Σ^½ (times D⁻¹ when ``weighted``)."""
    xp = problem.xp
    P, s, Q = truncated_svd(
        M,
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


def warm_power_iterations(rank: int, power_iters: int, warm_power_iters: int | None) -> int:
    """Power iterations of a sketch warm-started from the previous iteration's right singular
    vectors Q (``warm_power_iters``; ``None``: 0 at rank 1, ``power_iters`` otherwise).

    The warm sketch M[Q Ω] spans M Q, so its Rayleigh–Ritz step is never worse than the previous
    factors (descent holds for any q), and repeated across iterations it is a subspace iteration
    that follows the slowly changing M. At rank 1 the gap σ₁ ≫ σ_{r+p+1} of M = (R ⊙ B)D (|R| is
    nearly rank 1) makes the extra passes useless: on the benchmark layers q = 0 ends within 1e-6
    of q = 2 after 20 iterations (docs/benchmarks.md); at larger ranks they still pay.
    """
    if warm_power_iters is None:
        return 0 if rank == 1 else power_iters
    return check_int("warm_power_iters", warm_power_iters, 0)


def use_kernel(problem: Problem, kernel: str) -> bool:
    """Whether the loop runs the numba row kernel: ``"auto"`` when it is available and applies
    (:func:`slabopt.solvers._alternating_kernels.applies`), ``"numba"`` demands it (ValueError
    otherwise), ``"numpy"`` never."""
    if kernel == "numpy":
        return False
    budget = problem.budget
    fits = _kernels.applies(problem.W, budget.pattern.kind, budget.nnz_per_row, budget.rank)
    fits = fits and isinstance(problem.d, type(problem.W)) and problem.d.dtype == problem.W.dtype
    if kernel == "numba" and not (_kernels.available() and fits):
        why = "numba is not installed or SLABOPT_KERNELS=0" if not _kernels.available() else (
            "it needs a NumPy float32/float64 W, the row pattern with 0 < k < n and rank >= 1")
        raise ValueError(f"kernel='numba' cannot run here: {why}")
    return fits and _kernels.available()


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
    warm_power_iters: int | None = None,
    kernel: str = "auto",
) -> Decomposition:
    """Alternate the sparse, binary and low-rank steps (docs/formulation.md §5.1-§5.4).

    Options
    -------
    variant : "weighted" (default; L = SVD_r((R⊙B)D)D⁻¹, monotone) or "paper" (unweighted SVD)
    svd : "auto" (randomized when r + p ≤ min(m, n)/4), "exact" or "randomized"
    power_iters, oversample : randomized range finder settings (q and p)
    warm_start : start each sketch from the previous iteration's right singular vectors
    warm_power_iters : power iterations of a warm-started sketch; ``None`` (default): 0 at rank 1,
        ``power_iters`` otherwise (see :func:`warm_power_iterations`)
    kernel : "auto" (the numba row kernel when installed and applicable, else NumPy), "numba"
        (demand the kernel) or "numpy" (the reference array-API loop); same iterates either way
    """
    variant = check_choice("variant", variant, VARIANTS)
    svd = check_choice("svd", svd, SVD_METHODS)
    power_iters = check_int("power_iters", power_iters, 0)
    oversample = check_int("oversample", oversample, 0)
    kernel = check_choice("kernel", kernel, KERNELS)
    r = problem.budget.rank
    warm_q = warm_power_iterations(r, power_iters, warm_power_iters)
    weighted = variant == "weighted"
    if r == 0:  # nothing to alternate with: one exact sparse step
        return sparse_only(problem)
    svd_options = dict(svd=svd, oversample=oversample, power_iters=power_iters, warm_start=warm_start,
                       warm_power_iters=warm_q)
    if use_kernel(problem, kernel):
        return fused_loop(problem, weighted, **svd_options)
    return reference_loop(problem, weighted, **svd_options)


def sparse_only(problem: Problem) -> Decomposition:
    """Rank 0: one exact sparse step S = mask ⊙ W (P4), f = ‖(W − S)D‖_F²."""
    S, mask = sparse_step(problem, problem.xp.zeros_like(problem.W))
    f = diagonal_objective(problem.W - S, problem.d)
    problem.report(1, f)
    return Decomposition(S=S, mask=mask, history=[f], message="rank 0: sparse step only")


# (U, V, L, Q) of L = U Vᵀ: L formed only for rank > 1, Q the right singular vectors of the last SVD
Factors = tuple[Any, Any, Any, Any]


def lowrank_update(problem: Problem, M: Any, factors: Factors, it: int, weighted: bool, scratch: Any, *,
                   svd: str, oversample: int, power_iters: int, warm_start: bool,
                   warm_power_iters: int) -> tuple[float, Factors]:
    """The low-rank step (P3) of iteration ``it`` on its SVD target M = (R ⊙ B)D (R ⊙ B for the paper
    variant), shared by both loops: returns f = ‖(R ⊙ B − L)D‖_F² and the factors (U, V, L, Q) the next
    iteration starts from. The previous factors stay when they give the lower f, which only an inexact,
    randomized SVD can cause (it must never undo descent); ``scratch`` is an m×n buffer for an
    explicitly evaluated objective."""
    U, V, L, Q_prev = factors
    r = problem.budget.rank
    start = Q_prev if warm_start else None
    U_new, V_new, Q = lowrank_factors(
        problem, M, r, weighted=weighted, svd=svd, oversample=oversample,
        power_iters=power_iters if start is None else warm_power_iters, seed=problem.seed + it,
        start=start,
    )
    if weighted:
        old = None if U is None else (U, V)
        f, keep = weighted_objectives(problem, M, (U_new, V_new), old, scratch)
    else:
        f, keep = weighted_error(problem, M, outer(U_new, V_new), out=scratch), False
    if not keep:
        U, V = U_new, V_new
        L = None if r == 1 else outer(U, V)  # formed once, used twice for rank > 1
    return f, (U, V, L, Q)


def reference_steps(problem: Problem, buffers: tuple, factors: Factors, weighted: bool) -> Any:
    """The sparse, binary and SVD-target steps of one iteration in the four m×n ``buffers``
    (SE, R, LB, B), starting from L ⊙ B in LB; returns the mask:

        SE: E = W − L⊙B, then S = mask ⊙ E (P4)      R: the sparse scores, then R = W − S
        LB: selection scratch, R⊙L, then M = (R⊙B)D   B: the ±1 signs sign(R ⊙ L), or sign(R) (P2)
    """
    xp, W = problem.xp, problem.W
    SE, R, LB, B = buffers
    U, V, L, _ = factors
    SE[...] = W
    SE -= LB  # E = W − L⊙B
    mask = sparse_mask(problem, SE, out=R, work=LB)  # sparse step (P4)
    SE *= xp.astype(mask, SE.dtype)  # S = mask ⊙ E
    R[...] = W
    R -= SE  # R = W − S
    if U is None:  # binary step (P2): B = sign(R ⊙ L), or sign(R) before any L
        sign_pm1_into(R, B)
    else:
        LB[...] = R
        sign_pm1_into(multiply_by_lowrank(LB, U, V, L), B)
    LB[...] = R
    LB *= B
    svd_target(problem, LB, weighted=weighted, overwrite=True)  # LB becomes M
    return mask


def reference_loop(problem: Problem, weighted: bool, **svd_options: Any) -> Decomposition:
    """The loop of :func:`alternating` in array-API operations on four reused m×n buffers (no m×n
    temporaries in the rank-1 loop): :func:`reference_steps`, then :func:`lowrank_update` (which
    takes ``svd_options``)."""
    xp, W = problem.xp, problem.W
    SE, R, B = xp.empty_like(W), xp.empty_like(W), xp.empty_like(W)
    LB = xp.zeros_like(W)
    factors: Factors = (None, None, None, None)
    history: list[float] = []
    converged = False
    for it in range(problem.max_iter):
        mask = reference_steps(problem, (SE, R, LB, B), factors, weighted)
        f, factors = lowrank_update(problem, LB, factors, it, weighted, R, **svd_options)
        LB[...] = B
        multiply_by_lowrank(LB, *factors[:3])  # L ⊙ B for the next sparse step
        if problem.record(history, f):
            converged = True
            break
    U, V = factors[:2]
    return Decomposition(S=SE, mask=mask, U=U, V=V, B=B, history=history, converged=converged,
                         message=problem.stop_message(converged))


def fused_loop(problem: Problem, weighted: bool, **svd_options: Any) -> Decomposition:
    """The loop of :func:`alternating` with the sparse, binary and SVD-target steps of each
    iteration done by one row pass of :class:`slabopt.solvers._alternating_kernels.RowKernel`
    (same iterates), then :func:`lowrank_update` (which takes ``svd_options``)."""
    kern = _kernels.RowKernel(problem.W, problem.d, problem.budget.nnz_per_row, weighted)
    scratch = problem.xp.empty_like(problem.W)  # only touched when an objective is evaluated explicitly
    factors: Factors = (None, None, None, None)
    history: list[float] = []
    converged = False
    for it in range(problem.max_iter):
        kern.step(*factors[:3])  # S, B and M = (R ⊙ B) D of this iteration
        f, factors = lowrank_update(problem, kern.M, factors, it, weighted, scratch, **svd_options)
        if problem.record(history, f):
            converged = True
            break
    U, V = factors[:2]
    return Decomposition(
        S=kern.sparse(out=kern.M),  # M is not needed any more: its buffer takes S
        mask=kern.mask,
        U=U,
        V=V,
        B=kern.B,  # boolean (True = +1): packed and used as is, no m×n ±1 matrix
        history=history,
        converged=converged,
        message=problem.stop_message(converged),
    )
