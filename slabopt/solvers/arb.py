"""ARB-LLM_RC (Li, Yan, Zhang, Qin, Xie, Tian, Shi, Kong, Zhang & Yang, "ARB-LLM: Alternating
Refined Binarizations for Large Language Models", ICLR 2025; github.com/ZHITENGLI/ARB-LLM at
commit 8512765 (the newest tree holds only the README), ``bigptq_arb.py``, ``binary_arb.py``,
``utils/structure_arb.py``, ``utils/autosearch_arb.py``), the authors' setting
``arb-rc --blocksize 128 --salient_metric hessian --num_p 1 --order2_group`` (README).

BiLLM's loop and searches (``_binarize``, :mod:`slabopt.solvers.billm`) with, in each block:

1. the salient columns chosen as in BiLLM;
2. with the column-group bitmap (CGB, ``column_group_bitmap=True``) the salient weights split in
   two at the quantile p of their non-zero |t| for which order-2 residual binarizations of
   {|t| < p} and {|t| ≥ p} fit t best;
3. the other weights split as in BiLLM;
4. every group binarized with row and column scales and no mean (ARB-RC): x ≈ α_i β_j s_ij,
   refined by ``max_iter`` alternating rounds (``_binarize.rc_order1``; the authors' 15, the
   registered default), and on the salient
   groups of order 2, x ≈ α⁰_i β⁰_j s⁰_ij + α¹_i β¹_j s¹_ij with the signs refitted too
   (``_binarize.rc_order2``).

The stored part is a :class:`slabopt.binarized.BinarizedMatrix` (row and column scales, no means,
salient weights in two groups with CGB); its bits are counted exactly after solving.
"""

from __future__ import annotations

import numpy as np

from ..binarized import BinarizedLayout, term_index
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..registry import register_method
from ._binarize import (
    BlockParts,
    assemble,
    binarized_info,
    check_common,
    rc_order1,
    rc_order2,
    salient_search,
    split_search,
    sweep,
)


def _layout(shape: tuple[int, int], options: dict) -> BinarizedLayout:
    """What ``arb`` stores (the most salient columns it can pick, 49 per block by default)."""
    bs, limit, _ = check_common(shape, options)
    cgb = options["column_group_bitmap"]
    if not isinstance(cgb, (bool, np.bool_)):
        raise TypeError(f"column_group_bitmap must be True or False, got {type(cgb).__name__}")
    return BinarizedLayout((int(shape[0]), int(shape[1])), bs, limit - 1, means=False, column_scales=True,
                           salient_split=bool(cgb))


def _groups(layout: BinarizedLayout, t: np.ndarray, limit: int) -> tuple[np.ndarray, list]:
    """The salient columns and the groups of a block: (salient, [(mask, salient?, group)]), in the
    authors' order (salient large, salient small, large, small; with no CGB one salient group)."""
    m, c = t.shape
    salient = salient_search(t, limit)
    on_salient = np.broadcast_to(salient, (m, c))
    groups = []
    if layout.salient_split:
        big = split_search(t, on_salient, order=2, nonzero=True)
        groups += [(big, True, 1), (on_salient & ~big, True, 0)]
    else:
        groups.append((on_salient, True, 0))
    large = split_search(t, ~on_salient, order=1, nonzero=False)
    groups += [(large, False, 1), (~on_salient & ~large, False, 0)]
    return salient, groups


def arb_block(layout: BinarizedLayout, limit: int, iters: int, w: np.ndarray, t: np.ndarray) -> BlockParts:
    """One block (module docstring): groups from t, then each group of w binarized by ARB-RC."""
    m, c = w.shape
    salient, groups = _groups(layout, t, limit)
    scales = np.zeros((layout.n_terms, m))
    col_scales = np.zeros((layout.n_terms, c))
    signs = np.zeros((m, c), dtype=bool)
    signs2 = np.zeros((m, c), dtype=bool)
    bitmap = np.zeros((m, c), dtype=bool)
    q = np.zeros((m, c))
    for mask, is_salient, group in groups:
        if is_salient:
            approx, alpha_r, alpha_c, planes = rc_order2(w, mask, iters)
            signs2 |= mask & planes[1]
        else:
            approx, a_r, a_c, plane = rc_order1(w, mask, iters)
            alpha_r, alpha_c, planes = a_r[None], a_c[None], plane[None]
        q += approx
        signs |= mask & planes[0]
        if group == 1:
            bitmap |= mask
        for k in range(alpha_r.shape[0]):
            t_idx = term_index(layout, is_salient, group, k)
            scales[t_idx], col_scales[t_idx] = alpha_r[k], alpha_c[k]
    return BlockParts(q=q, salient=salient, signs=signs, signs2=signs2, groups=bitmap,
                      row_scales=scales, col_scales=col_scales)


@register_method(
    "arb",
    description="ARB-LLM_RC: BiLLM's groups binarized with alternately refined row and column "
                "scales, salient weights in two groups (CGB) (Li et al. 2025)",
    components=("quant",),
    max_iter=15,
    needs_gram=True,
    quant_layout=_layout,
)
def arb(problem: Problem, *, blocksize: int = 128, salient_search: int = 50, metric: str = "hessian",
        column_group_bitmap: bool = True) -> Decomposition:
    """ARB-LLM_RC binarization of W (module docstring). ``solve(max_iter=...)``: alternating
    refinement rounds per group (the authors' 15 by default); ``column_group_bitmap``: split the
    salient weights in two groups (the authors' ``--order2_group``); the other options as in
    :func:`slabopt.solvers.billm.billm`."""
    options = dict(blocksize=blocksize, salient_search=salient_search, metric=metric,
                   column_group_bitmap=column_group_bitmap)
    layout = _layout(problem.shape, options)
    bs, limit, metric = check_common(problem.shape, options)
    iters = problem.max_iter
    parts = sweep(problem, bs, metric, lambda w, t: arb_block(layout, limit, iters, w, t))
    quant = assemble(layout, parts, like=problem.W)
    f = diagonal_objective(problem.W - quant.dequantize(), problem.d)
    problem.report(1, f)
    return Decomposition(quant=quant, history=[f], message=f"one-shot ARB-LLM_RC, {layout.describe()}",
                         info=binarized_info(quant.layout, parts, problem.budget.value_bits))
