"""Integer codes for the values of S (docs/formulation.md §2.4 and §4.7).

With ``sparse_bits`` = q the k values a row of S keeps (the "row" and N:M patterns keep the same
number in every row) are stored as q-bit codes with one scale per row, the symmetric quantiser of
:mod:`slabopt.quantized`:

    s_ij = σ_i · (c_ij − 2^(q−1)),   c_ij ∈ {0, …, 2^q − 1},

so the kept values form an m×k :class:`slabopt.QuantizedMatrix` (per output channel, symmetric).
The scale of a row is chosen to minimise the weighted error of that row,

    σ_i = argmin over σ ∈ {2·p·max_j |e_ij| / (2^q − 1) : p in SHRINKS}  Σ_j w_ij (e_ij − Q_σ(e_ij))²,

with w_ij = d_j² (the weight of the entry in the diagonal objective), the grid search of GPTQ's
``Quantizer(mse=True)`` with weights; p = 1 is the min-max scale, so the chosen scale is never worse
than it. Scales are rounded to the stored precision (IEEE half for b ≤ 16, float32 above) before
the codes are fitted, so what is saved reproduces the values exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend as bk
from .quantized import QuantizedMatrix

SHRINKS = tuple(1.0 - 0.025 * i for i in range(29))  # p = 1, 0.975, …, 0.3
ROWS_PER_CHUNK = 1 << 20  # entries processed at a time by the scale search


def stored_scale_dtype(value_bits: int) -> str:
    """The name of the dtype a b-bit scale is kept in: "float16" for b ≤ 16, "float32" above."""
    return "float16" if value_bits <= 16 else "float32"


def quantize_values(values: Any, scales: Any, bits: int) -> Any:
    """Codes c = clamp(round(e/σ) + 2^(q−1), 0, 2^q − 1) of the m×k ``values`` with the row
    ``scales`` (m×1; round half to even), as floats."""
    xp = bk.namespace(values)
    zero = float(2 ** (bits - 1))
    return xp.clip(xp.round(values / scales) + zero, 0.0, float(2**bits - 1))


def dequantize_values(codes: Any, scales: Any, bits: int) -> Any:
    """σ · (c − 2^(q−1)) for codes c (m×k) and row scales σ (m×1)."""
    return scales * (codes - float(2 ** (bits - 1)))


def _row_errors(values: Any, weights: Any, scales: Any, bits: int) -> Any:
    """Σ_j w_ij (e_ij − Q_σ(e_ij))² per row."""
    xp = bk.namespace(values)
    err = values - dequantize_values(quantize_values(values, scales, bits), scales, bits)
    return xp.sum(weights * err * err, axis=1)


def row_step(k: int) -> int:
    """Rows of k kept values processed at a time (about ``ROWS_PER_CHUNK`` entries, at least one
    row): the blocks of :func:`fit_row_scales`, and of the callers that code S block by block."""
    return max(1, ROWS_PER_CHUNK // max(k, 1))


def fit_row_scales(values: Any, weights: Any, bits: int, value_bits: int = 16) -> Any:
    """Row scales (m×1, compute dtype, rounded to the stored precision) of least weighted error
    over the shrink grid ``SHRINKS`` (first best on ties); a row of zeros gets scale 1."""
    xp = bk.namespace(values)
    m, k = values.shape
    stored = stored_scale_dtype(value_bits)
    tiny = float(np.finfo(stored).smallest_normal)
    maxq = float(2**bits - 1)

    def rounded(p: float, amax: Any) -> Any:
        s = bk.round_to_precision(2.0 * p * amax / maxq, stored)
        return xp.where(s > 0, s, xp.full_like(s, tiny))

    scales = []
    step = row_step(k)
    for i0 in range(0, m, step):
        rows = slice(i0, min(i0 + step, m))
        v, w = values[rows, :], weights[rows, :]
        amax = (xp.max(xp.abs(v), axis=1, keepdims=True) if k
                else xp.zeros((v.shape[0], 1), dtype=v.dtype, device=bk.device(v)))
        amax = xp.where(amax > 0, amax, xp.ones_like(amax))
        best = rounded(SHRINKS[0], amax)
        best_err = _row_errors(v, w, best, bits)
        for p in SHRINKS[1:]:
            s = rounded(p, amax)
            err = _row_errors(v, w, s, bits)
            better = err < best_err
            best = xp.where(xp.reshape(better, (-1, 1)), s, best)
            best_err = xp.where(better, err, best_err)
        scales.append(best)
    return xp.concat(scales, axis=0) if scales else xp.ones((0, 1), dtype=values.dtype,
                                                             device=bk.device(values))


def sparse_codes(values: Any, weights: Any, bits: int, value_bits: int = 16) -> QuantizedMatrix:
    """The m×k kept values as q-bit codes with the row scales of :func:`fit_row_scales`."""
    xp = bk.namespace(values)
    scales = fit_row_scales(values, weights, bits, value_bits)
    codes = quantize_values(values, scales, bits)
    return QuantizedMatrix(codes=xp.astype(codes, xp.uint8), scales=scales, zeros=None, bits=bits,
                           group_size=None)
