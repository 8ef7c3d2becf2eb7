"""``slab_obs``: S + L ⊙ B with optimal-brain-surgeon error feedback (docs/formulation.md §5.7).

GPTQ's column loop (:func:`slabopt.solvers._obs.obs_sweep`: damped H = XᵀX + λ·mean(diag)·I,
Hinv = the upper Cholesky factor of H⁻¹, columns in blocks, each column's error (w − ŵ)/Hinv_cc
pushed onto the columns not yet rounded) with the entry grid of S + L ⊙ B in place of the uniform
grid. For each block of columns [i1, i2), on the weights W₁ as the earlier blocks left them:

1. **L of the block's group** (``l_group`` = G columns; one group for the whole matrix when
   ``None``, fitted on W before any update): with B = sign(W₁) the best non-negative L of rank r is
   the weighted rank-r fit of |W₁|,  L = SVD_r(|W₁| D) D⁻¹  (D = diag √(XᵀX)_jj; dead inputs 0);
2. **the mask of S**: in every row the k_b entries of largest OBS score
   (|w| − l)² / Hinv_jj²  (k_b = the row's count split over the blocks in proportion to width);
3. at rank 1, L refitted to the entries S does not keep, by alternating weighted least squares
   a_i = Σ_{j∉M} d_j² c_j |w_ij| / Σ_{j∉M} d_j² c_j²,  c_j = Σ_{i∉M} a_i |w_ij| / Σ_{i∉M} a_i²;
4. column by column: b = sign(w) (w the column after the feedback so far), ŵ = l ⊙ b, and on the
   kept entries ŵ = l·b + σ·(c − 2^(q−1)), c = clamp(round((w − l·b)/σ) + 2^(q−1), 0, 2^q − 1)
   (or the value itself in b bits without ``sparse_bits``); then the OBS update.

σ is one scale per row for the codes of S, fitted before the sweep (weighted grid search of
:func:`slabopt.sparse_codes.fit_row_scales`) on the residuals a sweep without feedback would code.
Everything is float64 NumPy, as ``gptq``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _backend as bk
from .._validation import check_choice, check_int
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..quantized import QuantizedMatrix
from ..registry import register_method
from ..sparse_codes import dequantize_values, fit_row_scales, quantize_values
from ._obs import dead_inputs, gptq_hessian, input_diagonal, obs_sweep, upper_cholesky_of_inverse
from .scale_refit import refit_scales
from .slack_fill import greedy_fill

REFIT_ITERS = 10  # alternating least-squares rounds of step 3


def block_counts(n: int, blocksize: int, k: int) -> np.ndarray:
    """k split over the column blocks in proportion to their widths (largest remainders), summing to k."""
    widths = np.diff(np.r_[np.arange(0, n, blocksize), n])
    share = k * widths / n
    counts = np.floor(share).astype(np.int64)
    extra = k - int(counts.sum())
    counts[np.argsort(-(share - counts), kind="stable")[:extra]] += 1
    return np.minimum(counts, widths)


def weighted_abs_fit(A: np.ndarray, d: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, V) with U Vᵀ = SVD_r(|A| D) D⁻¹ (columns with d_j = 0 get V_j = 0): the L of rank r that
    minimises ‖(|A| − L) D‖_F; at rank 1 both factors are ≥ 0 (Perron–Frobenius). The singular
    vectors come from the eigenvectors of the smaller Gram matrix, M Mᵀ or Mᵀ M (M = |A| D)."""
    M = np.abs(A) * d
    if M.shape[0] < M.shape[1]:
        _, vecs = np.linalg.eigh(M @ M.T)
        Us = vecs[:, ::-1][:, :rank]
        U, Vs = Us, M.T @ Us  # U Vsᵀ = Us Usᵀ M, the projection on the top left singular vectors
    else:
        _, vecs = np.linalg.eigh(M.T @ M)
        Vs = vecs[:, ::-1][:, :rank]
        U = M @ Vs
    V = np.divide(Vs, d[:, None], out=np.zeros((A.shape[1], rank)), where=d[:, None] > 0)
    if rank == 1 and U.sum() < 0:
        U, V = -U, -V
    return U, V


def refit_rank1(A: np.ndarray, d2: np.ndarray, keep: np.ndarray, a: np.ndarray,
                c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: alternating weighted least squares for |A| ≈ a cᵀ on the entries ``keep`` (weights d_j²)."""
    absA = np.abs(A) * keep
    for _ in range(REFIT_ITERS):
        den = (keep * (d2 * c * c)).sum(axis=1)
        a = np.divide(absA @ (d2 * c), den, out=a.copy(), where=den > 0)
        den = (keep * (a * a)[:, None]).sum(axis=0)
        c = np.divide(a @ absA, den, out=c.copy(), where=den > 0)
    return a, c


@dataclass
class _State:
    """What the sweep builds: L's factors per group, the mask, signs, codes and S."""

    U: np.ndarray  # m × (r·groups)
    V: np.ndarray  # n × (r·groups), V[j] nonzero only in the columns of j's group
    L: np.ndarray  # m × n, L = U Vᵀ as fitted so far
    mask: np.ndarray
    positive: np.ndarray
    codes: np.ndarray
    S: np.ndarray
    counts: np.ndarray  # m × blocks: entries S keeps per row in each block
    refit_history: list | None = None


def _select_mask(W1: np.ndarray, L1: np.ndarray, hdiag: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """In row i the counts[i] entries of largest OBS score (|w| − l)² / Hinv_jj² (step 2)."""
    score = (np.abs(W1) - L1) ** 2 / hdiag**2
    order = np.argsort(-score, axis=1, kind="stable")
    mask = np.zeros(W1.shape, dtype=bool)
    ranks = np.arange(W1.shape[1])[None, :] < counts[:, None]
    np.put_along_axis(mask, order, ranks, axis=1)
    return mask


def _fit_group(st: _State, W1: np.ndarray, cols: slice, g: int, d: np.ndarray, rank: int) -> None:
    """Step 1 for the group of columns ``cols`` (index g), on W₁ = the group's current weights."""
    U, V = weighted_abs_fit(W1, d[cols], rank)
    st.U[:, g * rank:(g + 1) * rank] = U
    st.V[cols, g * rank:(g + 1) * rank] = V
    st.L[:, cols] = U @ V.T


def _refit_group(st: _State, W1: np.ndarray, cols: slice, g: int, d: np.ndarray) -> None:
    """Step 3 at rank 1 on the group's columns, then L of those columns updated."""
    a, c = refit_rank1(W1, d[cols] ** 2, ~st.mask[:, cols], st.U[:, g], st.V[cols, g])
    st.U[:, g], st.V[cols, g] = a, c
    st.L[:, cols] = np.outer(a, c)


def _blocks(n: int, blocksize: int) -> list[slice]:
    return [slice(i, min(i + blocksize, n)) for i in range(0, n, blocksize)]


def _prepare_block(st: _State, W1: np.ndarray, b: int, cols: slice, grouped: bool, d: np.ndarray,
                   hdiag: np.ndarray) -> None:
    """Steps 1–3 for block b: L of its group (the one global L is kept as it is), the block's mask
    with st.counts[:, b] entries per row, and at rank 1 the refit of L to the unkept entries."""
    rank = st.U.shape[1] // (st.counts.shape[1] if grouped else 1)
    if grouped:
        _fit_group(st, W1, cols, b, d, rank)
    st.mask[:, cols] = _select_mask(W1, st.L[:, cols], hdiag, st.counts[:, b])
    if grouped and rank == 1:
        _refit_group(st, W1, cols, b, d)


def _new_state(m: int, n: int, rank: int, blocks: list[slice], grouped: bool) -> _State:
    groups = len(blocks) if grouped else 1
    return _State(U=np.zeros((m, rank * groups)), V=np.zeros((n, rank * groups)), L=np.zeros((m, n)),
                  mask=np.zeros((m, n), dtype=bool), positive=np.ones((m, n), dtype=bool),
                  codes=np.zeros((m, n), dtype=np.uint8), S=np.zeros((m, n)),
                  counts=np.zeros((m, len(blocks)), dtype=np.int64))


def _spread_counts(st: _State, W: np.ndarray, hdiag: np.ndarray, blocks: list[slice], k: int,
                   spread: str) -> None:
    """st.counts: k per row split over the blocks, evenly by width or, ``spread="adaptive"``, as
    the row's k entries of largest OBS score on W (L as fitted on W) fall."""
    m, n = W.shape
    if spread == "even":
        st.counts[:] = block_counts(n, blocks[0].stop, k)[None, :]
        return
    chosen = _select_mask(W, st.L, hdiag, np.full(m, k))
    st.counts[:] = np.stack([chosen[:, cols].sum(axis=1) for cols in blocks], axis=1)


def _start(W: np.ndarray, d: np.ndarray, hdiag: np.ndarray, rank: int, grouped: bool,
           blocks: list[slice], k: int, spread: str) -> _State:
    """The state of a sweep without feedback: L fitted on W as given (per group, or one global L),
    the counts spread over the blocks, every block prepared on W, and the global L refitted at
    rank 1 to the entries S does not keep."""
    m, n = W.shape
    st = _new_state(m, n, rank, blocks, grouped)
    for g, cols in enumerate(blocks if grouped else [slice(0, n)]):
        _fit_group(st, W[:, cols], cols, g, d, rank)
    _spread_counts(st, W, hdiag, blocks, k, spread)
    for b, cols in enumerate(blocks):
        _prepare_block(st, W[:, cols], b, cols, grouped, d, hdiag[cols])
    if not grouped and rank == 1:
        _refit_group(st, W, slice(0, n), 0, d)
    return st


def grid_scales(W: np.ndarray, d2: np.ndarray, bits: int, value_bits: int) -> np.ndarray:
    """σ (m×1, rounded to the stored precision) of least Σ_j d_j² (w_ij − σ_i·clamp(round(w_ij/σ_i),
    −2^(b−1), 2^(b−1) − 1))²: the symmetric uniform b-bit grid of each row, by the weighted search
    over shrinks of max_j |w_ij| / 2^(b−1) that the codes of S use
    (:func:`slabopt.sparse_codes.fit_row_scales` on the grid c − 2^(b−1), c ∈ {0 … 2^b − 1})."""
    return fit_row_scales(W, np.broadcast_to(d2, W.shape), bits, value_bits)


def _align(st: _State, W: np.ndarray, d: np.ndarray, q: int, value_bits: int) -> np.ndarray:
    """L of S's grid when S keeps every entry: l_ij = 2^(q−1)·σ_i (U = 2^(q−1)σ, V = 1), so that
    l·b + σ·(c − 2^(q−1)) runs over the uniform (q+1)-bit grid σ_i·{−2^q … 2^q − 1} (b = +1: the
    non-negative half, b = −1: the negative one); returns σ, the row scales of S's codes."""
    sigma = grid_scales(W, d * d, q + 1, value_bits)
    st.U[:, 0] = 2.0 ** (q - 1) * sigma[:, 0]
    st.V[:, 0] = 1.0
    st.L[:] = st.U[:, :1] * st.V[:, 0]
    return sigma


def _code_units(st: _State, code_scale: str) -> np.ndarray:
    """u_ij, the unit the scale of row i multiplies for entry (i, j): 1 (``code_scale="row"``),
    or |l_ij| (``"lowrank"``: the codes of S in units of L itself)."""
    return np.ones_like(st.L) if code_scale == "row" else np.abs(st.L)


def _row_scales(W: np.ndarray, st: _State, d: np.ndarray, k: int, q: int | None, value_bits: int,
                code_scale: str) -> np.ndarray | None:
    """τ (m×1): the row scales of the codes of S (an entry's scale is τ_i·u_ij), fitted on the
    residuals (W − L⊙sign W)/u that a sweep without feedback would code, weights d_j²·u_ij²;
    ``None`` when S keeps nothing or its values are not coded."""
    if q is None or k == 0:
        return None
    m = W.shape[0]
    units = _code_units(st, code_scale)[st.mask].reshape(m, k)
    E = (W - st.L * np.where(W >= 0, 1.0, -1.0))[st.mask].reshape(m, k)
    values = np.divide(E, units, out=np.zeros_like(E), where=units > 0)
    weights = np.broadcast_to(d * d, W.shape)[st.mask].reshape(m, k) * units**2
    return fit_row_scales(values, weights, q, value_bits)


def _round_entries(w: np.ndarray, base: np.ndarray, kept: np.ndarray, scale: np.ndarray | None,
                   q: int | None, store: type) -> tuple[np.ndarray, np.ndarray]:
    """(ŵ, codes) of one column (step 4): ŵ = l·b off the mask; on it l·b + the residual coded at
    q bits with the entries' ``scale`` τ_i·u_ij (a zero scale codes 0), or stored in b bits."""
    if not kept.any():
        return base.copy(), np.zeros(w.shape, np.uint8)
    e = w - base  # the whole column at once (cheaper than gathering the kept entries), then masked
    if q is None:
        return np.where(kept, base + e.astype(store).astype(np.float64), base), np.zeros(w.shape, np.uint8)
    live = scale > 0
    c = np.where(live, quantize_values(e, np.where(live, scale, 1.0), q), 2.0 ** (q - 1))
    codes = np.where(kept, c, 0.0).astype(np.uint8)
    return np.where(kept, base + dequantize_values(c, scale, q), base), codes


def _column(st: _State, w: np.ndarray, c: int, tau: np.ndarray | None, q: int | None, store: type,
            code_scale: str, joint: bool = False) -> np.ndarray:
    """Step 4 for column c with current weights w: records B, the codes and S; returns ŵ. With
    ``joint`` each kept entry takes the sign whose grid has the nearer point (b and the code chosen
    together: the nearest point of the union of both halves), else b = sign(w)."""
    positive = w >= 0
    scale = None if tau is None else tau[:, 0] * (1.0 if code_scale == "row" else np.abs(st.L[:, c]))
    base = np.where(positive, st.L[:, c], -st.L[:, c])
    w_hat, codes = _round_entries(w, base, st.mask[:, c], scale, q, store)
    if joint:
        alt, alt_codes = _round_entries(w, -base, st.mask[:, c], scale, q, store)
        flip = st.mask[:, c] & (np.abs(w - alt) < np.abs(w - w_hat))
        positive, base = positive ^ flip, np.where(flip, -base, base)
        w_hat, codes = np.where(flip, alt, w_hat), np.where(flip, alt_codes, codes)
    st.positive[:, c], st.codes[:, c], st.S[:, c] = positive, codes, w_hat - base
    return w_hat


def _sweep(W: np.ndarray, Hinv: np.ndarray, st: _State, d: np.ndarray, grouped: bool,
           blocks: list[slice], column) -> None:
    """The OBS loop (step 4), each block prepared (steps 1–3) on the weights it then has."""
    hdiag = np.diag(Hinv)
    width = blocks[0].stop - blocks[0].start

    def start_block(i1: int, i2: int, W1: np.ndarray, Hinv1: np.ndarray) -> None:
        _prepare_block(st, W1, i1 // width, slice(i1, i2), grouped, d, hdiag[i1:i2])

    obs_sweep(W, Hinv, width, lambda c, i, W1, Hinv1: column(W1[:, i], c), start_block)


@register_method(
    "slab_obs",
    description="S + L ⊙ B with OBS error feedback through H, blocks of 128, block-wise L (GPTQ-style loop)",
    needs_gram=True,
    grouped_lowrank=True,
)
def slab_obs(problem: Problem, *, blocksize: int = 128, feedback: bool = True, spread: str = "even",
             code_scale: str = "row", refit: int = 1, fill: bool = True,
             align: bool | None = None) -> Decomposition:
    """S + L ⊙ B column block by column block with error feedback (module docstring).

    The budget fixes the rank r, the kept entries per row k, the group size of L (``l_group``; the
    sweep's blocks are then L's groups) and q (``sparse_bits``). ``feedback=False`` skips the OBS
    updates (the same grid, each block prepared on W as given): the ablation of the feedback.
    ``spread``: how a row's k entries are split over the blocks ("even" by width, or "adaptive":
    where its k best entries on W fall). ``code_scale``: the scale of an entry's code, τ_i ("row")
    or τ_i·|l_ij| ("lowrank"); either way one b-bit τ per row is stored. ``refit``: rounds of the
    exact least-squares refit of L's factors and the scales of S under g (rank 1, ``code_scale="row"``;
    :mod:`slabopt.solvers.scale_refit`). ``fill``: after the sweep, spend the bits the positions'
    bound charged beyond their exact code on more entries of S (:mod:`slabopt.solvers.slack_fill`).
    ``align`` (default ``None``: exactly when S keeps every entry, at rank 1 with one L and coded S):
    L starts as 2^(q−1)·σ (:func:`_align`), so that S + L ⊙ B is the uniform (q+1)-bit grid of each
    row, and each entry takes its sign and code together (the nearest grid point)."""
    bud = problem.budget
    spread = check_choice("spread", spread, ("even", "adaptive"))
    code_scale = check_choice("code_scale", code_scale, ("row", "lowrank"))
    W = bk.to_numpy(problem.W).astype(np.float64, copy=True)
    grouped = bud.l_group is not None
    blocks = _blocks(W.shape[1], bud.l_group if grouped else check_int("blocksize", blocksize, 1))
    k, q = bud.nnz_per_row or 0, bud.sparse_bits
    dead = dead_inputs(problem)
    W[:, dead] = 0.0
    d = np.sqrt(np.where(dead, 0.0, input_diagonal(problem)))
    H = gptq_hessian(problem, dead)
    Hinv = upper_cholesky_of_inverse(H, via_cholesky=True)
    W0 = W.copy()
    st = _start(W, d, np.diag(Hinv), bud.rank, grouped, blocks, k, spread)
    aligned = _aligns(align, k, W.shape[1], q, bud.rank, grouped, code_scale)
    tau = (_align(st, W, d, q, bud.value_bits) if aligned
           else _row_scales(W, st, d, k, q, bud.value_bits, code_scale))
    store = np.float16 if bud.value_bits <= 16 else np.float32

    def column(w: np.ndarray, c: int) -> np.ndarray:
        return _column(st, w, c, tau, q, store, code_scale, joint=aligned)

    if feedback:
        _sweep(W, Hinv, st, d, grouped, blocks, column)
    else:
        for c in range(W.shape[1]):
            column(W[:, c], c)
    if fill and k > 0:
        _fill(st, W0, H, tau, q, store, code_scale, bud)
    refit = check_int("refit", refit, 0)
    if refit and bud.rank == 1 and code_scale == "row":
        tau = _refit(st, W0, H, blocks if grouped else [slice(0, W.shape[1])], tau, refit)
    return _decomposition(problem, st, tau, q, k)


def _aligns(align: bool | None, k: int, n: int, q: int | None, rank: int, grouped: bool,
            code_scale: str) -> bool:
    """Whether L is aligned to S's grid (``align=None``: exactly when S keeps every entry and the
    alignment applies: coded S, rank 1, one L, row scales)."""
    applies = q is not None and rank == 1 and not grouped and code_scale == "row"
    if align and not applies:
        raise ValueError("align=True needs coded S (sparse_bits), rank 1, one L (no l_group) and "
                         'code_scale="row"')
    return applies and (k == n if align is None else bool(align))


def _fill(st: _State, W: np.ndarray, H: np.ndarray, tau: np.ndarray | None, q: int | None, store: type,
          code_scale: str, bud) -> None:
    """More entries of S, the same number in every row, chosen greedily under g while the exact
    bits (positions by their exact code) stay within the budget's (:func:`slack_fill.greedy_fill`)."""
    W_hat = np.where(st.mask, st.S, 0.0) + st.L * np.where(st.positive, 1.0, -1.0)
    sigma = None if tau is None else tau * _code_units(st, code_scale)

    def fits(mask: np.ndarray) -> bool:
        indptr = np.r_[0, np.cumsum(mask.sum(axis=1))]
        positions = bud.exact_position_bits(indptr, np.nonzero(mask)[1])
        return bud.bits_with(int(indptr[-1]), positions) <= bud.bits

    rows, cols, delta, codes, _ = greedy_fill((W - W_hat) @ H, H, st.mask, sigma, q, store, fits)
    st.S[rows, cols], st.codes[rows, cols] = delta, codes


def _refit(st: _State, W: np.ndarray, H: np.ndarray, groups: list[slice], tau: np.ndarray | None,
           rounds: int) -> np.ndarray | None:
    """L's factors and the scales of S refitted under g (:func:`scale_refit.refit_scales`) with
    B, the mask and the codes fixed: S's values become τ_i·S_ij and the codes' scales τ_i·σ_i."""
    n = W.shape[1]
    index = np.zeros(n, dtype=np.int64)
    for g, cols in enumerate(groups):
        index[cols] = g
    c = st.V[np.arange(n), index]
    T = np.where(st.mask, st.S, 0.0)
    a, c, t, hist = refit_scales(W, H, st.positive, st.U, c, index, T, np.ones(W.shape[0]), rounds)
    st.U[:] = a
    st.V[np.arange(n), index] = c
    st.L[:] = a[:, index] * c
    st.S[:] = T * t[:, None]
    st.refit_history = hist
    return None if tau is None else tau * t[:, None]


def _decomposition(problem: Problem, st: _State, tau: np.ndarray | None, q: int | None,
                   k: int) -> Decomposition:
    """The parts in the caller's library: S on its mask, U, V, B (True = +1) and the codes of S."""
    like, xp = problem.W, problem.xp

    def put(a: np.ndarray, dtype=None):
        on = bk.from_numpy(np.ascontiguousarray(a), like=like)
        return xp.astype(on, like.dtype if dtype is None else dtype)

    m = st.S.shape[0]
    codes = None
    if q is not None and k > 0:
        kept = st.codes[st.mask].reshape(m, -1)
        codes = QuantizedMatrix.from_numpy(kept, tau, None, q, None, None, like=like)
    U, V = (None, None) if st.U.shape[1] == 0 else (put(st.U), put(st.V))
    S = np.where(st.mask, st.S, 0.0)
    W_hat = S + st.L * np.where(st.positive, 1.0, -1.0)
    f = diagonal_objective(problem.W - put(W_hat), problem.d)
    problem.report(1, f)
    return Decomposition(S=put(S), mask=put(st.mask, xp.bool), U=U, V=V,
                         B=None if U is None else put(st.positive, xp.bool), sparse_codes=codes,
                         history=[f], message="one sweep with OBS error feedback",
                         info={} if st.refit_history is None else {"refit_objective": st.refit_history})
