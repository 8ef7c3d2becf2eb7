"""The binary matrix B ∈ {+1, −1}^{m×n}: the sign rule and 1-bit packing.

sign(0) = +1 throughout (docs/formulation.md §1, §5.2). Packed layout: row-major, 8 signs per byte,
most significant bit first (the layout of ``numpy.packbits``), bit 1 = +1, bit 0 = −1, rows padded
to whole bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend as bk

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)


def is_positive(x: Any) -> Any:
    """Boolean "sign(x) = +1": x ≥ 0, so sign(0) = +1 (also for −0.0)."""
    return x >= 0


def sign_pm1(x: Any) -> Any:
    """Entrywise sign with sign(0) = +1, in the dtype of ``x``."""
    xp = bk.namespace(x)
    one = xp.asarray(1, dtype=x.dtype, device=bk.device(x))
    return xp.where(is_positive(x), one, -one)


def pm1_into(positive: Any, out: Any) -> Any:
    """``out`` ← where(positive, +1, −1), the ±1 matrix of the boolean "is +1" matrix, in place
    (NumPy and torch: 2·positive − 1 without a temporary, 10× faster; the standard has no
    bool-to-float assignment)."""
    if bk.library_name(out) in ("numpy", "torch"):
        out[...] = positive
        out *= 2
        out -= 1
        return out
    xp = bk.namespace(out)
    one = xp.asarray(1, dtype=out.dtype, device=bk.device(out))
    out[...] = xp.where(positive, one, -one)
    return out


def pm1_from_positive(positive: Any, dtype: Any) -> Any:
    """The ±1 matrix (in ``dtype``) of a boolean "is +1" matrix."""
    xp = bk.namespace(positive)
    return pm1_into(positive, xp.empty(positive.shape, dtype=dtype, device=bk.device(positive)))


def sign_pm1_into(x: Any, out: Any) -> Any:
    """``out`` ← sign(x) with sign(0) = +1, in place (``out`` is a float array shaped like x)."""
    return pm1_into(is_positive(x), out)


def pack_signs(b: Any) -> Any:
    """Pack an m×n ±1 (or boolean "is +1") matrix into m×ceil(n/8) uint8."""
    xp = bk.namespace(b)
    m, n = b.shape
    positive = b if b.dtype == xp.bool else b >= 0
    if isinstance(positive, np.ndarray):  # the same bytes in one pass (numpy.packbits pads with 0)
        return np.packbits(positive, axis=1, bitorder="big")
    pad = (-n) % 8
    bits = xp.astype(positive, xp.uint8)
    if pad:
        bits = xp.concat([bits, xp.zeros((m, pad), dtype=xp.uint8, device=bk.device(b))], axis=1)
    weights = xp.asarray(_BIT_WEIGHTS, dtype=xp.uint8, device=bk.device(b))
    groups = xp.reshape(bits, (m, (n + pad) // 8, 8)) * weights
    return xp.astype(xp.sum(groups, axis=-1, dtype=xp.int32), xp.uint8)


def unpack_signs(packed: Any, n: int, dtype: Any = None) -> Any:
    """Inverse of :func:`pack_signs`: the m×n ±1 matrix (float32 unless ``dtype`` is given)."""
    xp = bk.namespace(packed)
    m, nbytes = packed.shape
    if nbytes * 8 < n or nbytes * 8 - n >= 8:
        raise ValueError(f"packed signs of width {nbytes} bytes cannot hold n = {n} columns")
    shifts = xp.asarray((7, 6, 5, 4, 3, 2, 1, 0), dtype=xp.uint8, device=bk.device(packed))
    bits = xp.bitwise_and(
        xp.bitwise_right_shift(xp.reshape(packed, (m, nbytes, 1)), shifts),
        xp.asarray(1, dtype=xp.uint8, device=bk.device(packed)),
    )
    bits = xp.reshape(bits, (m, nbytes * 8))[:, :n]
    dtype = xp.float32 if dtype is None else dtype
    return xp.astype(bits, dtype) * 2 - 1
