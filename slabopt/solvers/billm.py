"""BiLLM (Huang, Liu, Qin, Li, Zhang, Liu, Magno & Qi, "BiLLM: Pushing the Limit of Post-Training
Quantization for LLMs", ICML 2024; github.com/Aaronhuang-778/BiLLM, ``bigptq.py`` ``BRAGPTQ.fasterquant``
with ``binary.py``, ``utils/structure.py``, ``utils/autosearch.py`` and ``utils/mask.py``), the
authors' setting ``braq --blocksize 128 --salient_metric hessian`` (``run.sh``).

In each block of 128 columns (the loop of ``_binarize.sweep``: errors go to the later blocks only),
with saliency t = w²/Hinv_jj²:

1. the salient columns: of the 49 columns of largest Σ_i t_ij, the top i (1 ≤ i ≤ 49) for which
   two order-2 residual binarizations of t (those columns, and the rest) fit t best;
2. the other weights split at the quantile p of |t| (levels 0.10 … 0.90) for which order-1
   binarizations of {|t| < p} and {|t| ≥ p} fit t best;
3. the block's weights binarized per row on each of the three groups (``_binarize.braq``): order 2
   on the salient columns, order 1 on the two others, each term with its own row mean and scale.

The stored part is a :class:`slabopt.binarized.BinarizedMatrix` (means, no column scales, no
split of the salient weights); its bits are counted exactly after solving (``result.bits``). The
damping λ is ``solve(damping=...)`` (the authors' ``percdamp`` = 0.01).
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
    braq,
    check_common,
    salient_search,
    split_search,
    sweep,
)


def _layout(shape: tuple[int, int], options: dict) -> BinarizedLayout:
    """What ``billm`` stores (the most salient columns it can pick, 49 per block by default)."""
    bs, limit, _ = check_common(shape, options)
    return BinarizedLayout((int(shape[0]), int(shape[1])), bs, limit - 1, means=True, column_scales=False,
                           salient_split=False)


def billm_block(layout: BinarizedLayout, limit: int, w: np.ndarray, t: np.ndarray) -> BlockParts:
    """One block: salient columns and split from t, then w binarized on the three groups
    (module docstring); terms: (salient, order 0), (salient, order 1), small, large."""
    m, c = w.shape
    salient = salient_search(t, limit)
    on_salient = np.broadcast_to(salient, (m, c))
    large = split_search(t, ~on_salient, order=1, nonzero=False)
    small = ~on_salient & ~large
    scales = np.zeros((layout.n_terms, m))
    means = np.zeros((layout.n_terms, m))
    signs = np.zeros((m, c), dtype=bool)
    signs2 = np.zeros((m, c), dtype=bool)
    q = np.zeros((m, c))
    for mask, kind, group, order in ((small, False, 0, 1), (large, False, 1, 1), (on_salient, True, 0, 2)):
        approx, mu, alpha, planes = braq(w, mask, order)
        q += approx
        signs |= mask & planes[0]
        if order == 2:
            signs2 |= mask & planes[1]
        for k in range(order):
            t_idx = term_index(layout, kind, group, k)
            scales[t_idx], means[t_idx] = alpha[k], mu[k]
    return BlockParts(q=q, salient=salient, signs=signs, signs2=signs2, groups=large,
                      row_scales=scales, row_means=means)


@register_method(
    "billm",
    description="BiLLM: salient columns binarized twice, the rest split in two groups, 1 sign bit "
                "per weight; errors fed between 128-column blocks (Huang et al. 2024)",
    components=("quant",),
    needs_gram=True,
    quant_layout=_layout,
)
def billm(problem: Problem, *, blocksize: int = 128, salient_search: int = 50,
          metric: str = "hessian") -> Decomposition:
    """BiLLM binarization of W (module docstring). ``salient_search``: the search tries the top
    1 … salient_search − 1 columns of each block; ``metric``: saliency w²/Hinv_jj² ("hessian") or
    w ("magnitude")."""
    options = dict(blocksize=blocksize, salient_search=salient_search, metric=metric)
    layout = _layout(problem.shape, options)
    bs, limit, metric = check_common(problem.shape, options)
    parts = sweep(problem, bs, metric, lambda w, t: billm_block(layout, limit, w, t))
    quant = assemble(layout, parts, like=problem.W)
    f = diagonal_objective(problem.W - quant.dequantize(), problem.d)
    problem.report(1, f)
    return Decomposition(quant=quant, history=[f], message=f"one-shot BiLLM, {layout.describe()}",
                         info=binarized_info(quant.layout, parts, problem.budget.value_bits))

