"""Round-to-nearest quantisation (docs/formulation.md §2.3 and §5.5): every entry of W rounded to
the nearest of 2^bits levels of its row (or of its row's group of columns), with no use of the
activations -- the RTN baseline of the GPTQ paper, with the same quantiser (``quant.py`` of
IST-DASLab/gptq, :func:`slabopt.quantized.fit_scale_zero`) fitted on each group of W.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as bk
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..quantized import QuantizedMatrix, QuantLayout, fit_scale_zero, quant_layout, quantize_codes
from ..registry import register_method


def _layout(shape: tuple[int, int], options: dict) -> QuantLayout:
    return quant_layout(shape, options["bits"], options["group_size"], options["symmetric"])


@register_method(
    "rtn",
    description="round-to-nearest integer codes per output channel or per group (scale + zero point)",
    components=("quant",),
    quant_layout=_layout,
)
def rtn(problem: Problem, *, bits: int = 4, group_size: int | None = 128,
        symmetric: bool | None = None) -> Decomposition:
    """Round W to ``bits``-bit codes with a scale (and, unless symmetric, a zero point) per row
    (``group_size=None``) or per row and group of ``group_size`` columns (the last group is shorter
    when it does not divide n). ``symmetric=None``: symmetric per channel, asymmetric with groups."""
    lay = _layout(problem.shape, dict(bits=bits, group_size=group_size, symmetric=symmetric))
    maxq = 2**lay.bits - 1
    W = bk.to_numpy(problem.W).astype(np.float64)
    m, n = W.shape
    width = n if lay.group_size is None else lay.group_size
    codes = np.empty((m, n), dtype=np.uint8)
    scales = np.empty((m, lay.n_groups))
    zeros = np.empty((m, lay.n_groups))
    for g, c in enumerate(range(0, n, width)):
        block = W[:, c:c + width]
        scale, zero = fit_scale_zero(block, maxq, lay.symmetric)
        codes[:, c:c + width] = quantize_codes(block, scale[:, None], zero[:, None], maxq)
        scales[:, g], zeros[:, g] = scale, zero
    quant = QuantizedMatrix.from_numpy(codes, scales, None if lay.symmetric else zeros, lay.bits,
                                       lay.group_size, None, like=problem.W)
    f = diagonal_objective(problem.W - quant.dequantize(), problem.d)
    problem.report(1, f)
    return Decomposition(quant=quant, history=[f], message=f"round to nearest, {lay.describe()}")
