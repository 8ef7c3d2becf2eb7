"""Binarized matrices: the part stored by the binarization baselines ``billm`` (BiLLM, Huang et al.,
ICML 2024) and ``arb`` (ARB-LLM_RC, Li et al., ICLR 2025), and every bit it costs on disk.

Both methods cut the n columns of W into blocks of ``blocksize`` columns (the last block may be
shorter). In block b a set C_b of *salient* columns is binarized twice (two sign planes), the other
columns once; each weight also belongs to one of two *groups* of its kind (an "is in the larger
group" bit). Entry (i, j), j in block b, in group h of its kind, is

    Ŵ_ij = Σ_k ( μ_{b,t,k}[i] + α_{b,t,k}[i] · β_{t,k}[j] · s_{k,ij} ),   s_{k,ij} ∈ {−1, +1},

with t = the term of (kind, h), k = 0, 1 on salient columns and k = 0 elsewhere, s_0 the first sign
plane, s_1 the second (salient columns only). BiLLM stores the row means μ and row scales α
(β = 1); ARB-RC stores no means (μ = 0), row scales α and column scales β. ARB-LLM_RC's column-group
bitmap (CGB) splits the salient weights into two groups as well; without it they form one group.

Layout on disk (:class:`BinarizedLayout`, counted by :meth:`BinarizedLayout.storage_bits`), with
S = Σ_b |C_b| salient columns and b-bit values:

* the first sign plane, 1 bit per weight: m·n;
* the second sign plane on the salient columns: m·S;
* the group bitmap, 1 bit per non-salient weight: m·(n − S) (with CGB also m·S for the salient ones);
* which columns are salient, a bitmap of 1 bit per column: n;
* the row values, b bits each: m · n_blocks · T · (2 with means else 1), T = 2·(salient groups) + 2
  (group, order) terms: 8 values per row and block for BiLLM, 6 for ARB-LLM_RC (4 without CGB);
* ARB-RC's column scales, b bits each, per column for each term its column belongs to:
  S·2·(salient groups) + (n − S)·2.

S depends on the data (the search picks 1 … ``salient_search`` − 1 columns per block), so the
layout a method declares before solving counts the most salient columns it can pick (an upper
bound that a requested ratio is checked against), and the stored part's layout counts its S
exactly (:attr:`BinarizedLayout.salient_columns`, ignored when layouts are compared).

The papers count fewer bits: "1.08 bits" for BiLLM is the sign planes alone (1 bit per weight plus
1 per salient weight); :func:`paper_bits` gives that count and :func:`bit_breakdown` each term.

Signs are stored as booleans (True = +1), and sign(0) = +1 as everywhere in slabopt; the authors'
``torch.sign`` gives 0 there, which one bit cannot store (a weight exactly equal to its group's mean,
or exactly 0 for ARB-RC, in a column whose scale is not 0: never seen on real-valued layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _backend as bk


@dataclass(frozen=True)
class BinarizedLayout:
    """What a binarized m×n matrix stores (see the module docstring), hence what it costs.

    Attributes
    ----------
    shape : (m, n)
    blocksize : columns per block (row values are stored per block)
    max_salient : the most salient columns one block of ``blocksize`` columns can have
    means : row means μ are stored (BiLLM) or not (ARB-RC)
    column_scales : column scales β are stored (ARB-RC)
    salient_split : the salient weights are split into two groups (ARB-LLM's CGB)
    salient_columns : S, the number of salient columns stored; ``None`` before solving (then the
        most S can be). Not part of the format: ignored by ``==``.
    """

    shape: tuple[int, int]
    blocksize: int
    max_salient: int
    means: bool
    column_scales: bool
    salient_split: bool
    salient_columns: int | None = field(default=None, compare=False)

    # --- the attributes ``solve`` records in ``settings["quant"]`` for every quantised part ----------
    @property
    def bits(self) -> int:
        """Bits per code: 1 (a sign)."""
        return 1

    @property
    def group_size(self) -> int:
        """Columns sharing one set of row values: the block size."""
        return self.blocksize

    @property
    def symmetric(self) -> bool:
        """No means are stored (μ = 0)."""
        return not self.means

    @property
    def group_index(self) -> bool:
        """A per-column index (the salient-column bitmap) is stored: always."""
        return True

    # --- sizes ----------------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return -(-self.shape[1] // self.blocksize)

    @property
    def salient_groups(self) -> int:
        """Groups of salient weights: 2 with CGB, else 1."""
        return 2 if self.salient_split else 1

    @property
    def n_terms(self) -> int:
        """Terms (group, order) per block: 2 orders per salient group, then the 2 other groups."""
        return 2 * self.salient_groups + 2

    def block_widths(self) -> list[int]:
        """Columns in each block."""
        n, bs = self.shape[1], self.blocksize
        return [min(bs, n - c) for c in range(0, n, bs)]

    def most_salient(self) -> int:
        """The largest S the search can reach: min(max_salient, width − 1) per block."""
        return sum(max(0, min(self.max_salient, w - 1)) for w in self.block_widths())

    @property
    def n_salient(self) -> int:
        """S as stored, or the most it can be when not known yet."""
        return self.most_salient() if self.salient_columns is None else self.salient_columns

    def storage_bits(self, value_bits: int = 16) -> int:
        """Every stored bit (module docstring), exactly; an upper bound while S is not known."""
        return sum(bit_breakdown(self, value_bits).values())

    def describe(self) -> str:
        """e.g. "binarized, blocks of 128, means, 2 salient groups"."""
        kind = "row and column scales" if self.column_scales else "row scales"
        means = " and means" if self.means else ""
        cgb = ", salient weights in 2 groups" if self.salient_split else ""
        return f"binarized in blocks of {self.blocksize} with {kind}{means}{cgb}"


def bit_breakdown(layout: BinarizedLayout, value_bits: int = 16) -> dict[str, int]:
    """The bits of each stored part (module docstring): ``signs`` (m·n), ``second_plane`` (m·S),
    ``group_bitmap`` (m·(n − S), + m·S with CGB), ``salient_columns`` (n), ``row_values``
    (b·m·n_blocks·terms·(1 + means)) and ``column_scales`` (ARB-RC)."""
    m, n = layout.shape
    S = layout.n_salient
    per_term = 2 if layout.means else 1
    cols = 0
    if layout.column_scales:
        cols = value_bits * (S * 2 * layout.salient_groups + (n - S) * 2)
    return {
        "signs": m * n,
        "second_plane": m * S,
        "group_bitmap": m * (n - S) + (m * S if layout.salient_split else 0),
        "salient_columns": n,
        "row_values": value_bits * m * layout.n_blocks * layout.n_terms * per_term,
        "column_scales": cols,
    }


def paper_bits(layout: BinarizedLayout) -> int:
    """The papers' own count (BiLLM's "1.08 bits"): the sign planes only, m·n + m·S."""
    m, n = layout.shape
    return m * n + m * layout.n_salient


def term_index(layout: BinarizedLayout, salient: bool, group: int, order: int = 0) -> int:
    """The term of (kind, group, order): salient groups first (2 orders each), then the two
    groups of the other weights. Group 1 is the group of the larger saliency."""
    if salient:
        return 2 * group + order
    return 2 * layout.salient_groups + group


@dataclass(frozen=True)
class BinarizedMatrix:
    """A binarized m×n matrix (module docstring), in the caller's array library and device.

    Attributes
    ----------
    layout : its :class:`BinarizedLayout` (``salient_columns`` = S)
    salient : n booleans, True at the salient columns
    signs : m×n booleans, the first sign plane (True = +1)
    signs2 : m×S booleans, the second sign plane on the salient columns (ascending)
    groups : m×(n − S) booleans on the other columns (ascending): True = group 1
    salient_groups : m×S booleans (CGB) or ``None``
    row_scales : n_blocks×terms×m values α
    row_means : n_blocks×terms×m values μ, or ``None`` (ARB-RC)
    column_scales_salient : (2·salient groups)×S values β (ARB-RC) or ``None``
    column_scales_other : 2×(n − S) values β (ARB-RC) or ``None``
    """

    layout: BinarizedLayout
    salient: Any
    signs: Any
    signs2: Any
    groups: Any
    salient_groups: Any
    row_scales: Any
    row_means: Any = None
    column_scales_salient: Any = None
    column_scales_other: Any = None

    def __post_init__(self) -> None:
        m, n = self.layout.shape
        S = self.layout.salient_columns
        lay = self.layout
        expect = {
            "salient": (n,), "signs": (m, n), "signs2": (m, S), "groups": (m, n - S),
            "salient_groups": (m, S) if lay.salient_split else None,
            "row_scales": (lay.n_blocks, lay.n_terms, m),
            "row_means": (lay.n_blocks, lay.n_terms, m) if lay.means else None,
            "column_scales_salient": (2 * lay.salient_groups, S) if lay.column_scales else None,
            "column_scales_other": (2, n - S) if lay.column_scales else None,
        }
        for name, shape in expect.items():
            value = getattr(self, name)
            got = None if value is None else tuple(value.shape)
            if got != shape:
                raise ValueError(f"{name} must have shape {shape}, got {got}")
        if S != int(bk.to_numpy(self.salient).sum()):
            raise ValueError("layout.salient_columns must be the number of salient columns")

    @property
    def shape(self) -> tuple[int, int]:
        return self.layout.shape

    def storage_bits(self, value_bits: int = 16) -> int:
        """Every stored bit, exactly (:func:`bit_breakdown`)."""
        return self.layout.storage_bits(value_bits)

    def dequantize(self, dtype: Any = None) -> Any:
        """The dense m×n Ŵ of the module docstring, in ``dtype`` (default: the values' dtype),
        computed on the host in float64 and returned in the library and device of the values."""
        host = {name: getattr(self, name) for name in _ARRAYS}
        Q = _dense(self.layout, {name: None if a is None else bk.to_numpy(a) for name, a in host.items()})
        xp = bk.namespace(self.row_scales)
        out = bk.from_numpy(Q, like=self.row_scales)
        return xp.astype(out, self.row_scales.dtype if dtype is None else dtype)

    @classmethod
    def from_numpy(cls, layout: BinarizedLayout, parts: dict[str, np.ndarray | None],
                   like: Any) -> BinarizedMatrix:
        """Build from NumPy parts (keys: the array attributes), in the library, device and value
        dtype of ``like``; booleans stay booleans."""
        xp = bk.namespace(like)

        def put(a: np.ndarray | None) -> Any:
            if a is None:
                return None
            arr = bk.from_numpy(np.ascontiguousarray(a), like=like)
            return arr if a.dtype == np.bool_ else xp.astype(arr, like.dtype)

        return cls(layout=layout, **{name: put(parts.get(name)) for name in _ARRAYS})


_ARRAYS = ("salient", "signs", "signs2", "groups", "salient_groups", "row_scales", "row_means",
           "column_scales_salient", "column_scales_other")


def _dense(layout: BinarizedLayout, p: dict[str, np.ndarray | None]) -> np.ndarray:
    """Ŵ from NumPy parts: each entry's terms gathered by (block, term, row) and summed."""
    m, n = layout.shape
    salient = p["salient"].astype(bool)
    blk = np.arange(n) // layout.blocksize
    rows = np.arange(m)[:, None]
    s1 = np.where(p["signs"], 1.0, -1.0)
    Q = np.zeros((m, n))
    scales, means = p["row_scales"].astype(np.float64), p["row_means"]
    for is_sal, cols in ((True, np.flatnonzero(salient)), (False, np.flatnonzero(~salient))):
        if cols.size == 0:
            continue
        bits = p["salient_groups"] if is_sal else p["groups"]
        h = np.zeros((m, cols.size), dtype=np.int64) if bits is None else bits.astype(np.int64)
        col_scales = p["column_scales_salient"] if is_sal else p["column_scales_other"]
        planes = [s1[:, cols]] + ([np.where(p["signs2"], 1.0, -1.0)] if is_sal else [])
        for k, sign in enumerate(planes):
            t = term_index(layout, is_sal, 0, k) + (2 if is_sal else 1) * h
            value = scales[blk[cols][None, :], t, rows]
            if col_scales is not None:
                row = (2 * h + k) if is_sal else h
                value = value * col_scales.astype(np.float64)[row, np.arange(cols.size)[None, :]]
            value = value * sign
            if means is not None:
                value = value + means.astype(np.float64)[blk[cols][None, :], t, rows]
            Q[:, cols] += value
    return Q
