"""Unsigned integers packed at a fixed width, most significant bit first, row by row.

Row i of a rows × cols array of values < 2^width becomes ⌈cols·width/8⌉ bytes: the concatenated
width-bit binary forms of its values, padded with zero bits to a whole byte (the layout of
:func:`slabopt.pack_signs` for width 1).
"""

from __future__ import annotations

import torch

from slabopt import pack_signs, unpack_signs


def packed_width(cols: int, width: int) -> int:
    """Bytes per packed row."""
    return -(-cols * width // 8)


def _digit_dtype(width: int) -> torch.dtype:
    """The narrowest integer dtype whose shifts give the low ``width`` bits of a value."""
    for dtype, bits in ((torch.uint8, 8), (torch.int16, 15), (torch.int32, 31)):
        if width <= bits:
            return dtype
    return torch.int64


def binary_digits(values: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width`` binary digits of each value, most significant first (a new last axis, bool);
    the shifts run in the narrowest dtype that holds ``width`` bits (1 byte per digit up to 8)."""
    dtype = _digit_dtype(width)
    shifts = torch.arange(width - 1, -1, -1, device=values.device, dtype=dtype)
    return ((values.to(dtype).unsqueeze(-1) >> shifts) & 1) > 0


def _pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """:func:`slabopt.pack_signs` of a boolean matrix; on the CPU by ``numpy.packbits`` (same bytes)."""
    if bits.device.type == "cpu":
        return torch.from_numpy(pack_signs(bits.numpy()))
    return pack_signs(bits)


def pack_uint(values: torch.Tensor, width: int) -> torch.Tensor:
    """rows × cols integers in [0, 2^width) → rows × ⌈cols·width/8⌉ uint8."""
    rows, cols = values.shape
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 1 << width):
        raise ValueError(f"values must lie in [0, {1 << width}) to be packed at {width} bits")
    return _pack_bits(binary_digits(values, width).reshape(rows, cols * width))


def unpack_uint(packed: torch.Tensor, cols: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_uint`: rows × cols int64 (accumulated digit by digit, no int64
    temporary per digit)."""
    rows = packed.shape[0]
    bits = (unpack_signs(packed, cols * width, torch.int8) > 0).reshape(rows, cols, width)
    out = torch.zeros(rows, cols, dtype=torch.int64, device=packed.device)
    for b in range(width):
        out <<= 1
        out |= bits[..., b]
    return out
