"""The one place that turns the stored parts of a decomposition into the dense Ŵ."""

from __future__ import annotations

from typing import Any

from . import _backend as bk
from .linalg import outer
from .quantized import QuantizedMatrix
from .signs import pm1_from_positive


def _column(xp: Any, values: Any) -> Any:
    """A length-m vector as an m×1 column, ready to broadcast over the rows."""
    return xp.reshape(values, (-1, 1))


def dense_weight(
    S: Any,
    *,
    U: Any = None,
    V: Any = None,
    B: Any = None,
    levels: Any = None,
    row_offset: Any = None,
    quant: QuantizedMatrix | None = None,
) -> Any:
    """Ŵ = S + (U Vᵀ) ⊙ B + where(B, high, low) + c·1ᵀ + scale·(code − zero), each term only when
    its parts are given.

    ``S`` is the dense m×n sparse part; ``U`` (m×r) and ``V`` (n×r) the factors of L (without
    ``B``, L is added as is); ``B`` the ±1 matrix or a boolean "is +1" matrix; ``levels`` (2×m)
    the two-level code, row 0 the low and row 1 the high value of each row, picked by B (+1 =
    high); ``row_offset`` c (m) a per-row offset; ``quant`` a :class:`slabopt.QuantizedMatrix`,
    added as :meth:`~slabopt.QuantizedMatrix.dequantize` (docs/formulation.md §2.3). Works on NumPy,
    PyTorch and CuPy arrays.
    """
    xp = bk.namespace(S)
    if (U is None) != (V is None):
        raise ValueError("give both U and V (L = U Vᵀ) or neither")
    if levels is not None and B is None:
        raise ValueError("levels need B, the matrix that picks the high (+1) or low (−1) level")
    is_bool = B is not None and B.dtype == xp.bool
    W_hat = S
    if U is not None:
        L = outer(U, V)
        if B is not None:
            L = L * (pm1_from_positive(B, L.dtype) if is_bool else B)
        W_hat = W_hat + L
    if levels is not None:
        high = B if is_bool else B > 0
        W_hat = W_hat + xp.where(high, _column(xp, levels[1, :]), _column(xp, levels[0, :]))
    if row_offset is not None:
        W_hat = W_hat + _column(xp, row_offset)
    if quant is not None:
        if tuple(quant.shape) != tuple(S.shape):
            raise ValueError(f"quant has shape {tuple(quant.shape)}, S {tuple(S.shape)}")
        W_hat = W_hat + quant.dequantize(S.dtype)
    return W_hat
