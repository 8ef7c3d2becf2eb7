"""Quantised matrices: integer codes with per-row or per-group scales and zero points
(docs/formulation.md §2.3, bits in §4.1-§4.2), the part stored by the quantisation baselines
``rtn`` and ``gptq``.

One entry of a quantised m×n matrix is

    Ŵ_ij = s_ig · (q_ij − z_ig),   g = the group of column j,

with an integer code ``q_ij ∈ {0, …, 2^bits − 1}``, a scale ``s_ig`` and a zero point ``z_ig`` per row
and group. Per output channel (``group_size=None``) a row is one group; with groups of G columns,
column j belongs to group ⌊j / G⌋ (the last group is shorter when G does not divide n), unless a
column-to-group index is stored (GPTQ's ``act_order`` with groups). Symmetric quantisers store no
zero point: it is the constant ``2^(bits−1)``.

The quantiser is a transcription of ``Quantizer.find_params`` and ``quantize`` in ``quant.py`` of
IST-DASLab/gptq (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023), with ``mse=False`` (min-max range): see
:func:`fit_scale_zero` and :func:`quantize_codes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend as bk
from ._validation import check_int

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class QuantLayout:
    """What a quantised m×n matrix stores, and therefore what it costs (docs/formulation.md §4.1).

    Attributes
    ----------
    shape : (m, n)
    bits : bits per code (2..8)
    group_size : columns per group, ``None`` = one group per row (per output channel)
    symmetric : no zero points are stored (the zero point is 2^(bits−1))
    group_index : a column-to-group index is stored (n entries of ⌈log2 n_groups⌉ bits)
    """

    shape: tuple[int, int]
    bits: int
    group_size: int | None
    symmetric: bool
    group_index: bool = False

    @property
    def n_groups(self) -> int:
        """Groups per row: 1 per channel, else ⌈n / group_size⌉."""
        n = self.shape[1]
        return 1 if self.group_size is None else -(-n // self.group_size)

    @property
    def n_scales(self) -> int:
        return self.shape[0] * self.n_groups

    @property
    def n_zeros(self) -> int:
        return 0 if self.symmetric else self.shape[0] * self.n_groups

    @property
    def index_bits(self) -> int:
        """n·⌈log2 n_groups⌉ when a column-to-group index is stored, else 0."""
        if not self.group_index:
            return 0
        return self.shape[1] * (self.n_groups - 1).bit_length()

    def storage_bits(self, value_bits: int = 16) -> int:
        """bits·m·n + b·(#scales + #zeros) (+ the group index), exactly."""
        m, n = self.shape
        return self.bits * m * n + value_bits * (self.n_scales + self.n_zeros) + self.index_bits

    def describe(self) -> str:
        """e.g. "4-bit asymmetric codes in groups of 128"."""
        kind = "symmetric" if self.symmetric else "asymmetric"
        where = "per output channel" if self.group_size is None else f"in groups of {self.group_size}"
        index = " with a column-to-group index" if self.group_index else ""
        return f"{self.bits}-bit {kind} codes {where}{index}"


def quant_layout(
    shape: tuple[int, int],
    bits: int,
    group_size: int | None,
    symmetric: bool | None,
    *,
    group_index: bool = False,
) -> QuantLayout:
    """Check the quantiser options and return their :class:`QuantLayout`.

    ``symmetric=None`` picks the usual setting: symmetric per output channel, asymmetric (with a
    zero point) for groups. A ``group_size`` that does not divide n leaves a shorter last group.
    """
    m, n = (int(s) for s in shape)
    bits = check_int("bits", bits, MIN_BITS, MAX_BITS)
    if group_size is not None:
        group_size = check_int("group_size", group_size, 1)
    if symmetric is None:
        symmetric = group_size is None
    elif not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric must be True, False or None, got {type(symmetric).__name__}")
    return QuantLayout((m, n), bits, group_size, bool(symmetric),
                       bool(group_index) and group_size is not None)


def fit_scale_zero(x: np.ndarray, maxq: int, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of each row of ``x`` (``Quantizer.find_params``, ``perchannel=True``,
    ``mse=False``): the range [min(x, 0), max(x, 0)] (made symmetric about 0 when ``symmetric``
    and the row has a negative entry), ``scale = (xmax − xmin)/maxq``, ``zero = round(−xmin/scale)``
    or ``(maxq + 1)/2`` when symmetric; a row of zeros gets the range [−1, 1]."""
    zeros_row = np.zeros(x.shape[0], dtype=x.dtype)
    xmin = np.minimum(x.min(axis=1), zeros_row)
    xmax = np.maximum(x.max(axis=1), zeros_row)
    if symmetric:
        xmax = np.maximum(np.abs(xmin), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    flat = (xmin == 0) & (xmax == 0)
    xmin[flat] = -1
    xmax[flat] = +1
    scale = (xmax - xmin) / maxq
    if symmetric:
        zero = np.full_like(scale, (maxq + 1) / 2)
    else:
        zero = np.round(-xmin / scale)
    return scale, zero


def quantize_codes(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, maxq: int) -> np.ndarray:
    """Codes ``clamp(round(x/scale) + zero, 0, maxq)`` (``quant.py::quantize``; round half to
    even), as floats; ``scale·(code − zero)`` is the quantised value."""
    return np.clip(np.round(x / scale) + zero, 0, maxq)


@dataclass(frozen=True)
class QuantizedMatrix:
    """A quantised m×n matrix Ŵ = scale·(code − zero) (docs/formulation.md §2.3), in the caller's
    array library and device.

    Attributes
    ----------
    codes : m×n uint8, values 0..2^bits − 1
    scales : m×n_groups, compute dtype (n_groups = 1 per output channel)
    zeros : m×n_groups zero points (integer-valued, compute dtype), or ``None`` for a symmetric
        quantiser, whose zero point is the constant 2^(bits−1)
    bits : bits per code
    group_size : columns per group, ``None`` = per output channel
    group_index : ``None`` (column j is in group ⌊j / group_size⌋), or n integers giving each
        column's group (GPTQ with ``act_order`` and groups: groups are consecutive in the
        activation order, not in the column order)
    """

    codes: Any
    scales: Any
    zeros: Any
    bits: int
    group_size: int | None
    group_index: Any = None

    def __post_init__(self) -> None:
        m, n = self.codes.shape
        if bk.dtype_name(self.codes) != "uint8":
            raise TypeError(f"codes must be uint8, got {bk.dtype_name(self.codes)}")
        groups = self.layout.n_groups
        if tuple(self.scales.shape) != (m, groups):
            raise ValueError(f"scales must be {m}×{groups}, got {tuple(self.scales.shape)}")
        if self.zeros is not None and tuple(self.zeros.shape) != (m, groups):
            raise ValueError(f"zeros must be {m}×{groups}, got {tuple(self.zeros.shape)}")
        if self.group_index is not None and tuple(self.group_index.shape) != (n,):
            raise ValueError(f"group_index must have n = {n} entries, got {tuple(self.group_index.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)  # type: ignore[return-value]

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def layout(self) -> QuantLayout:
        return QuantLayout(self.shape, self.bits, self.group_size, self.symmetric,
                           self.group_index is not None)

    def storage_bits(self, value_bits: int = 16) -> int:
        """bits·m·n + b·(#scales + #zeros) (+ n·⌈log2 n_groups⌉ for a group index)."""
        return self.layout.storage_bits(value_bits)

    def column_groups(self) -> Any:
        """The group of every column (n integers)."""
        xp = bk.namespace(self.scales)
        if self.group_index is not None:
            return self.group_index
        n = self.shape[1]
        cols = xp.arange(n, device=bk.device(self.scales))
        return cols // (n if self.group_size is None else self.group_size)

    def dequantize(self, dtype: Any = None) -> Any:
        """The m×n matrix scale·(code − zero), in the scales' dtype (or ``dtype``)."""
        xp = bk.namespace(self.scales)
        dtype = self.scales.dtype if dtype is None else dtype
        scales = xp.astype(self.scales, dtype)
        if self.layout.n_groups > 1 or self.group_index is not None:
            scales = xp.take(scales, self.column_groups(), axis=1)
        if self.zeros is None:
            zeros = float(2 ** (self.bits - 1))
        else:
            zeros = xp.astype(self.zeros, dtype)
            if self.layout.n_groups > 1 or self.group_index is not None:
                zeros = xp.take(zeros, self.column_groups(), axis=1)
        return scales * (xp.astype(self.codes, dtype) - zeros)

    @classmethod
    def from_numpy(cls, codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int,
                   group_size: int | None, group_index: np.ndarray | None, like: Any) -> QuantizedMatrix:
        """Build from NumPy parts, in the library, device and dtype of ``like``."""
        xp = bk.namespace(like)

        def put(a: np.ndarray, dtype: Any) -> Any:
            return xp.astype(bk.from_numpy(np.ascontiguousarray(a), like=like), dtype)

        return cls(
            codes=put(codes.astype(np.uint8), xp.uint8),
            scales=put(scales, like.dtype),
            zeros=None if zeros is None else put(zeros, like.dtype),
            bits=bits,
            group_size=group_size,
            group_index=None if group_index is None else put(group_index.astype(np.int64), xp.int64),
        )
