"""Machinery shared by the binarization baselines ``billm`` and ``arb`` (not part of the public API).

Both run the loop of BiLLM (Huang et al., ICML 2024, github.com/Aaronhuang-778/BiLLM,
``bigptq.py::BRAGPTQ.fasterquant``), which ARB-LLM (Li et al., ICLR 2025) keeps:

* H = XᵀX with H_jj = 1 and W[:, j] = 0 at dead inputs, damped by λ·mean(diag H), and Hinv the
  upper Cholesky factor of H⁻¹ (the GPTQ machinery of ``_obs.py``);
* the columns in blocks of ``blocksize``; in each block, with the block's weights w as the loop has
  them and d_j = Hinv_jj, the saliency t_ij = w_ij² / d_j² ("hessian") or t = w ("magnitude")
  chooses the salient columns and the groups (:func:`salient_search`, :func:`split_search`);
* the whole block is binarized at once (q), and only its error is fed forward, to the later blocks:
  W[:, end:] −= ((w − q) / d) · Hinv[block, end:] (:func:`sweep`). There is no update inside a block.

Everything is float64 NumPy. Signs that are stored are ±1 with sign(0) = +1 (the authors'
``torch.sign`` gives 0); signs only used inside a computation follow the authors (0 at 0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import _backend as bk
from .._validation import check_choice, check_int
from ..binarized import BinarizedLayout, BinarizedMatrix, bit_breakdown, paper_bits
from ..problem import Problem
from ._obs import dead_inputs, gptq_hessian, upper_cholesky_of_inverse

METRICS = ("hessian", "magnitude")


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """The float32 values of ``torch.linspace(start, end, steps)`` (CPU): start + i·step for the
    first half, end − (steps − 1 − i)·step for the second, each rounded once to float32."""
    f32 = np.float32
    step = np.float64((f32(end) - f32(start)) / f32(steps - 1))
    i = np.arange(steps, dtype=np.float64)
    low = np.float64(f32(start)) + step * i
    high = np.float64(f32(end)) - step * (steps - 1 - i)
    return np.where(i < steps // 2, low, high).astype(f32)


# The 81 quantile levels 0.10, 0.11, …, 0.90 of the split search, as the authors' float32 tensor.
PERCENTILES = _torch_linspace_f32(0.10, 0.90, 81)


def check_common(shape: tuple[int, int], options: dict) -> tuple[int, int, str]:
    """``blocksize`` ≥ 1, ``salient_search`` ≥ 2 (the search tries 1 … salient_search − 1 columns)
    and ``metric`` in ("hessian", "magnitude")."""
    bs = check_int("blocksize", options["blocksize"], 1)
    limit = check_int("salient_search", options["salient_search"], 2)
    metric = check_choice("metric", options["metric"], METRICS)
    return bs, limit, metric


def _row_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Σ_j values_ij / #{j : mask_ij} over each row's masked entries (0 for a row without any);
    ``values`` must be 0 off the mask (the authors' ``nanmean``)."""
    count = mask.sum(axis=1)
    return values.sum(axis=1) / np.maximum(count, 1)


def braq(x: np.ndarray, mask: np.ndarray, order: int, zero_sign: float = 1.0) -> tuple[np.ndarray, ...]:
    """BiLLM's residual binarization of the entries of ``mask``, row by row (``binary.py``
    ``high_order_residual``). With R⁰ = x on the mask, for k = 0 … order − 1:

        μ_k = mean_j R^k_ij,  α_k = mean_j |R^k_ij − μ_k|,  s_k = sign(R^k − μ_k),
        R^{k+1} = R^k − (μ_k + α_k s_k),

    means over the row's masked entries. Returns (approx = Σ_k μ_k + α_k s_k on the mask and 0 off
    it, μ (order×m), α (order×m), the planes "s_k = +1" (order×m×c booleans)); sign(0) =
    ``zero_sign`` (0 as the authors for values only used in searches, +1 for stored signs)."""
    approx = np.zeros_like(x)
    mus, alphas, planes = [], [], []
    for _ in range(order):
        r = np.where(mask, x - approx, 0.0)
        mu = _row_mean(r, mask)
        dev = np.where(mask, r - mu[:, None], 0.0)
        alpha = _row_mean(np.abs(dev), mask)
        s = np.sign(dev)
        s[dev == 0] = zero_sign
        approx = approx + np.where(mask, s * alpha[:, None] + mu[:, None], 0.0)
        mus.append(mu)
        alphas.append(alpha)
        planes.append(s >= 0)
    return approx, np.array(mus), np.array(alphas), np.array(planes)


def _braq_sq_error(x: np.ndarray) -> float:
    """‖x − braq(x, all, order 2)‖² for a block of whole columns (every entry masked)."""
    r = x
    for _ in range(2):
        mu = r.mean(axis=1, keepdims=True)
        dev = r - mu
        r = dev - np.abs(dev).mean(axis=1, keepdims=True) * np.sign(dev)
    return float(np.sum(r * r))


def salient_search(t: np.ndarray, limit: int) -> np.ndarray:
    """The salient columns of a block (``autosearch.py::structural_searching``, first part):
    the columns are ranked by Σ_i |t_ij|; of the top i = 1 … min(limit, width) − 1, the i whose
    columns and the rest, each binarized by :func:`braq` of order 2, leave the least squared
    error in t (the first on ties). Returns the boolean column mask."""
    width = t.shape[1]
    limit = min(limit, width)
    salient = np.zeros(width, dtype=bool)
    if limit < 2:
        return salient
    rank = np.argsort(-np.abs(t).sum(axis=0), kind="stable")
    ordered = t[:, rank]
    best, best_i = np.inf, 1
    for i in range(1, limit):
        err = _braq_sq_error(ordered[:, :i]) + _braq_sq_error(ordered[:, i:])
        if err < best:
            best, best_i = err, i
    salient[rank[:best_i]] = True
    return salient


def split_search(t: np.ndarray, region: np.ndarray, order: int, nonzero: bool) -> np.ndarray:
    """The bell-shaped split of ``region`` into a group of small and one of large |t|
    (``autosearch.py``, second part; ``utils/mask.py::generate_structural_mask``): for each of
    the 81 quantiles p of |t| ∘ region (all m·c entries, zeros included; only its non-zero ones
    when ``nonzero``), large = region ∘ (|t| ≥ p), small = region ∘ (|t| < p), each binarized by
    :func:`braq` of ``order``; the first p with the least squared error in t over the region wins
    (the authors sum the error over the whole block: the rest adds the same to every p).
    Returns the "large" mask (computed on the columns the region touches)."""
    flat = np.abs(np.where(region, t, 0.0)).ravel()
    if nonzero:
        flat = flat[flat != 0]
        if flat.size == 0:  # nothing to split (the authors' np.quantile fails here)
            return region.copy()
    levels = np.quantile(flat, PERCENTILES)
    cols = np.flatnonzero(region.any(axis=0))
    t_r, region_r = t[:, cols], region[:, cols]
    abs_t = np.abs(np.where(region_r, t_r, 0.0))
    best, best_large = np.inf, None
    for p in levels:
        large = region_r & (abs_t >= p)
        small = region_r & (abs_t < p)
        q = braq(t_r, small, order, 0.0)[0] + braq(t_r, large, order, 0.0)[0]
        e = np.where(region_r, t_r - q, 0.0)
        err = float(np.sum(e * e))
        if err < best:
            best, best_large = err, large
    if best_large is None:  # every error NaN: the first level (ARB-LLM's fallback)
        best_large = region_r & (abs_t >= levels[0])
    out = np.zeros(region.shape, dtype=bool)
    out[:, cols] = best_large
    return out


def _column_scales(r: np.ndarray, mask: np.ndarray, alpha_r: np.ndarray) -> np.ndarray:
    """β_j = mean over the column's masked entries of |r_ij| / α_i, skipping rows with α_i = 0
    (0/0 is NaN, which the authors' ``nanmean`` skips); 0 for a column without any."""
    valid = mask & (alpha_r != 0)[:, None]
    safe = np.where(alpha_r != 0, alpha_r, 1.0)
    ratio = np.where(valid, np.abs(r) / safe[:, None], 0.0)
    return ratio.sum(axis=0) / np.maximum(valid.sum(axis=0), 1)


def _refit_row_col(target: np.ndarray, sign: np.ndarray,
                   alpha_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One alternating least-squares round for target ≈ α_i β_j s_ij (s = 0 off the mask):
    α_i = Σ_j β_j s_ij t_ij / (Σ_j (β_j s_ij)² + 10⁻⁸), then β_j likewise with the new α."""
    cb = alpha_c[None, :] * sign
    alpha_r = np.sum(cb * target, axis=1) / (np.sum(cb * cb, axis=1) + 1e-8)
    rb = alpha_r[:, None] * sign
    alpha_c = np.sum(rb * target, axis=0) / (np.sum(rb * rb, axis=0) + 1e-8)
    return alpha_r, alpha_c


def rc_order1(x: np.ndarray, mask: np.ndarray, iters: int) -> tuple[np.ndarray, ...]:
    """ARB-RC of order 1 on the entries of ``mask`` (``binary_arb.py``
    ``high_order_residual_alternating_order1_rc_nomean``): x_ij ≈ α_i β_j s_ij with s = sign(x),
    α_i = mean_j |x_ij|, β_j = mean_i |x_ij| / α_i, then ``iters`` rounds of
    :func:`_refit_row_col` (s fixed). Returns (approx, α, β, "s = +1")."""
    xm = np.where(mask, x, 0.0)
    alpha_r = _row_mean(np.abs(xm), mask)
    alpha_c = _column_scales(xm, mask, alpha_r)
    sign = np.sign(xm)  # 0 off the mask, as the authors' sign(NaN)
    for _ in range(iters):
        alpha_r, alpha_c = _refit_row_col(xm, sign, alpha_c)
    stored = np.where(sign >= 0, 1.0, -1.0)
    approx = np.where(mask, alpha_c[None, :] * alpha_r[:, None] * stored, 0.0)
    return approx, alpha_r, alpha_c, stored > 0


def rc_order2(x: np.ndarray, mask: np.ndarray, iters: int) -> tuple[np.ndarray, ...]:
    """ARB-RC of order 2 on the entries of ``mask`` (``high_order_residual_alternating_order2_rc_nomean``):
    x ≈ α⁰_i β⁰_j s⁰_ij + α¹_i β¹_j s¹_ij, first by two residual passes of the order-1 start, then
    ``iters`` rounds of: (α⁰, β⁰) by :func:`_refit_row_col` on x − term 1, (α¹, β¹) on x − term 0,
    and (s⁰, s¹) ∈ {±1}² per entry the nearest of the four sums to x (the first on ties).
    Returns (approx, α (2×m), β (2×c), "s = +1" (2×m×c))."""
    xm = np.where(mask, x, 0.0)
    approx = np.zeros_like(xm)
    rows, cols, signs = [], [], []
    for _ in range(2):
        r = np.where(mask, xm - approx, 0.0)
        alpha_r = _row_mean(np.abs(r), mask)
        alpha_c = _column_scales(r, mask, alpha_r)
        sign = np.sign(r)
        approx = approx + np.where(mask, sign * alpha_r[:, None] * alpha_c[None, :], 0.0)
        rows.append(alpha_r)
        cols.append(alpha_c)
        signs.append(sign)
    for _ in range(iters):
        for k in (0, 1):
            other = 1 - k
            rest = xm - np.where(mask, cols[other][None, :] * rows[other][:, None] * signs[other], 0.0)
            rows[k], cols[k] = _refit_row_col(rest, np.where(mask, signs[k], 0.0), cols[k])
        signs = _nearest_signs(xm, np.outer(rows[0], cols[0]), np.outer(rows[1], cols[1]))
    stored = [np.where(s >= 0, 1.0, -1.0) for s in signs]
    approx = np.where(mask, sum(cols[k][None, :] * rows[k][:, None] * stored[k] for k in (0, 1)), 0.0)
    return approx, np.array(rows), np.array(cols), np.array([s > 0 for s in stored])


def _nearest_signs(x: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> list[np.ndarray]:
    """(s⁰, s¹) whose s⁰c0 + s¹c1 is nearest to x, candidates in the order (−,−), (−,+), (+,−),
    (+,+) and the first taken on ties."""
    v = np.stack([-c0 - c1, -c0 + c1, c0 - c1, c0 + c1], axis=2)
    idx = np.argmin(np.abs(x[:, :, None] - v), axis=2)
    return [np.where(idx <= 1, -1.0, 1.0), np.where((idx == 0) | (idx == 2), -1.0, 1.0)]


@dataclass
class BlockParts:
    """What one block of c columns stores (before assembly): ``q`` its binarized weights,
    ``salient`` (c), ``signs`` / ``signs2`` (m×c, the second plane read on salient columns only),
    ``groups`` (m×c, True = the group of larger saliency), ``row_scales`` / ``row_means``
    (terms×m) and ``col_scales`` (terms×c, each term read on its kind's columns)."""

    q: np.ndarray
    salient: np.ndarray
    signs: np.ndarray
    signs2: np.ndarray
    groups: np.ndarray
    row_scales: np.ndarray
    row_means: np.ndarray | None = None
    col_scales: np.ndarray | None = None


BlockRule = Callable[[np.ndarray, np.ndarray], BlockParts]


def sweep(problem: Problem, blocksize: int, metric: str, binarize_block: BlockRule) -> list[BlockParts]:
    """The BiLLM loop (module docstring): ``binarize_block(w, t)`` binarizes each block's weights
    w given its saliency t; the block's error ((w − q)/d) · Hinv[block, later] is fed forward."""
    W = bk.to_numpy(problem.W).astype(np.float64, copy=True)
    n = W.shape[1]
    dead = dead_inputs(problem)
    W[:, dead] = 0.0
    Hinv = upper_cholesky_of_inverse(gptq_hessian(problem, dead), via_cholesky=True)
    parts = []
    for c0 in range(0, n, blocksize):
        c1 = min(c0 + blocksize, n)
        w = W[:, c0:c1].copy()
        d = np.diag(Hinv)[c0:c1][None, :]
        t = w**2 / d**2 if metric == "hessian" else w
        part = binarize_block(w, t)
        W[:, c0:c1] = part.q
        W[:, c1:] -= ((w - part.q) / d) @ Hinv[c0:c1, c1:]
        parts.append(part)
    return parts


def assemble(layout: BinarizedLayout, parts: list[BlockParts], like: Any) -> BinarizedMatrix:
    """The :class:`slabopt.binarized.BinarizedMatrix` of the blocks' parts (S counted)."""
    salient = np.concatenate([p.salient for p in parts])

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts], axis=1)

    n_sal = 2 * layout.salient_groups
    groups = cat("groups")
    arrays = {
        "salient": salient,
        "signs": cat("signs"),
        "signs2": cat("signs2")[:, salient],
        "groups": groups[:, ~salient],
        "salient_groups": groups[:, salient] if layout.salient_split else None,
        "row_scales": np.stack([p.row_scales for p in parts]),
        "row_means": np.stack([p.row_means for p in parts]) if layout.means else None,
    }
    if layout.column_scales:
        cols = cat("col_scales")
        arrays["column_scales_salient"] = cols[:n_sal][:, salient]
        arrays["column_scales_other"] = cols[n_sal:][:, ~salient]
    exact = replace(layout, salient_columns=int(salient.sum()))
    return BinarizedMatrix.from_numpy(exact, arrays, like=like)


def binarized_info(layout: BinarizedLayout, parts: list[BlockParts], value_bits: int) -> dict:
    """Salient columns per block, the bits of each stored part (values at ``value_bits``) and both
    bit counts per weight: on disk, and the papers' (sign planes only)."""
    m, n = layout.shape
    return {
        "salient_per_block": [int(p.salient.sum()) for p in parts],
        "bits_breakdown": bit_breakdown(layout, value_bits),
        "bits_per_weight": layout.storage_bits(value_bits) / (m * n),
        "paper_bits_per_weight": paper_bits(layout) / (m * n),
    }
