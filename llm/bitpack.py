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


def binary_digits(values: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width`` binary digits of each value, most significant first (a new last axis, bool)."""
    shifts = torch.arange(width - 1, -1, -1, device=values.device)
    return ((values.to(torch.int64).unsqueeze(-1) >> shifts) & 1) > 0


def pack_uint(values: torch.Tensor, width: int) -> torch.Tensor:
    """rows × cols integers in [0, 2^width) → rows × ⌈cols·width/8⌉ uint8."""
    rows, cols = values.shape
    values = values.to(torch.int64)
    if bool((values < 0).any()) or bool((values >= 1 << width).any()):
        raise ValueError(f"values must lie in [0, {1 << width}) to be packed at {width} bits")
    return pack_signs(binary_digits(values, width).reshape(rows, cols * width))


def unpack_uint(packed: torch.Tensor, cols: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_uint`: rows × cols int64."""
    rows = packed.shape[0]
    bits = (unpack_signs(packed, cols * width, torch.int8) > 0).reshape(rows, cols, width)
    weights = 1 << torch.arange(width - 1, -1, -1, device=packed.device)
    return (bits.to(torch.int64) * weights).sum(-1)
