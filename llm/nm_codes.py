"""Compact storage of an N:M sparsity pattern: one combination code per group of M entries.

A group of M consecutive entries of a row keeps exactly N of them; there are C(M, N) such choices,
so a group is stored as its index among them (lexicographic order of the kept positions) in
⌈log₂ C(M, N)⌉ bits, packed most significant bit first: 3 bits per 4 entries for 2:4 (0.75 bit per
entry) and 7 bits per 8 for 4:8 (0.875), against 1 bit per entry for a bitmask.
"""

from __future__ import annotations

import math
from functools import cache
from itertools import combinations

import torch

from slabopt.patterns import nm_code_bits

from .bitpack import binary_digits, pack_uint, packed_width, unpack_uint

MAX_M = 16  # lookup tables of 2^M entries


code_bits = nm_code_bits  # bits per group: ⌈log₂ C(m, n)⌉ (the library's count of the same codes)


def packed_bytes(rows: int, cols: int, n: int, m: int) -> int:
    """Bytes of the packed codes of a rows × cols N:M mask."""
    return packed_width(rows * (cols // m), code_bits(n, m))


@cache
def _tables(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pattern → code, code → pattern); a pattern is the M-bit integer of a group, first entry
    most significant; patterns that are not N of M map to −1."""
    patterns = [sum(1 << (m - 1 - j) for j in keep) for keep in combinations(range(m), n)]
    to_code = torch.full((1 << m,), -1, dtype=torch.int64, device="cpu")  # host tables: codes are made there
    to_code[torch.tensor(patterns, device="cpu")] = torch.arange(len(patterns), device="cpu")
    return to_code, torch.tensor(patterns, dtype=torch.int64, device="cpu")


def encode(mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Pack a boolean rows × cols mask with exactly ``n`` True in every group of ``m`` (uint8)."""
    rows, cols = mask.shape
    if m > MAX_M or cols % m:
        raise ValueError(f"N:M codes need M <= {MAX_M} and M dividing the {cols} columns")
    groups = mask.reshape(rows, cols // m, m).to(torch.int64).cpu()
    value = (groups * (1 << torch.arange(m - 1, -1, -1, device=groups.device))).sum(-1)
    codes = _tables(n, m)[0][value]
    if bool((codes < 0).any()):
        raise ValueError(f"the mask is not {n}:{m}: some group of {m} keeps another number of entries")
    return pack_uint(codes.reshape(1, -1), code_bits(n, m)).reshape(-1)


def decode(packed: torch.Tensor, rows: int, cols: int, n: int, m: int) -> torch.Tensor:
    """The boolean rows × cols mask of :func:`encode`'s output."""
    codes = unpack_uint(packed.reshape(1, -1).cpu(), rows * (cols // m), code_bits(n, m)).reshape(-1)
    if bool((codes >= math.comb(m, n)).any()):
        raise ValueError(f"the packed {n}:{m} codes hold a value beyond C({m}, {n})")
    pattern = _tables(n, m)[1][codes]
    return binary_digits(pattern, m).reshape(rows, cols).to(packed.device)
