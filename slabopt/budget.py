"""Exact storage budgets (docs/formulation.md §4).

    bits(Ŵ) = (b + ι)·nnz(S) + b·r·(m + n) + m·n        (last term only when B is stored)
              ((q + ι)·nnz(S) + b·m with the values of S as q-bit codes, §4.7)
              + bits·m·n + b·(#scales + #zeros)            (a quantised part, §2.3)
              + m·n or m·(n/M)·⌈log₂ C(M, N)⌉             (positions="bitmask", §4.6)
              + m·R_p(n, k)                                (positions="rice", §4.8)
    with L stored per group of G input columns (``l_group``, §2.5) its factors cost
    b·r·(m·⌈n/G⌉ + n) instead of b·r·(m + n).
    ratio   = 1 − bits(Ŵ) / (b·m·n)

All arithmetic is on integers and exact fractions, so "the largest k with ratio(k) >= ratio" is
decided without rounding error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ._validation import check_choice, check_int, check_ratio
from .binarized import BinarizedLayout
from .patterns import Pattern, bitmask_bits, parse_pattern
from .positions import rice_bits, rice_bound, rice_bounds
from .quantized import QuantLayout

POSITIONS = ("index", "bitmask", "rice", "auto")
COMPONENTS = frozenset({"sparse", "lowrank", "binary", "twolevel", "offset", "quant"})
SLAB_COMPONENTS = frozenset({"sparse", "lowrank", "binary"})  # S + L ⊙ B, the default
# "twolevel": a per-row two-level code (two b-bit values per row + the 1-bit matrix B),
# docs/formulation.md §2.1, method two_level; it adds 2·b·m bits (``row_values`` = 2) and implies B.
# "offset": one b-bit value per row (docs/formulation.md §2.2; a per-row offset c in Ŵ = S + c·1ᵀ +
# L ⊙ B, ``row_values`` = 1).
# "quant": integer codes with scales and zero points (docs/formulation.md §2.3, methods rtn and gptq);
# what they cost is fixed by their QuantLayout (bits, group size, symmetric), ``Budget.quant``.


class InfeasibleBudgetError(ValueError):
    """The requested ratio cannot be reached with the given rank, shape and bit settings."""


@dataclass(frozen=True)
class Budget:
    """Sizes of every stored part of ``Ŵ = S + L ⊙ B`` for one layer.

    Attributes
    ----------
    shape : (m, n)
    rank : r, columns of the factors U (m×r) and V (n×r) (0 when no low-rank part is stored)
    nnz : number of stored sparse values, nnz(S)
    nnz_per_row : stored values per row for the "row" and N:M patterns, ``None`` for "global"
    pattern : the sparsity pattern
    binary : whether the m×n sign matrix B is stored (1 bit per entry)
    value_bits, index_bits : b and ι
    requested_ratio : the ratio asked for (``None`` when the budget was given as nnz)
    positions : "index" (ι bits per stored value), "bitmask" (the positions of S cost what the
        saved format stores: m·n bits, or the N:M codes), docs/formulation.md §4.6, or "rice"
        (Golomb–Rice codes of the gaps, charged at their bound m·R_p(n, k), §4.8)
    l_group : G, the input columns per group of L when L has its own factors per group
        (docs/formulation.md §2.5); ``None``: one L for the whole matrix
    """

    shape: tuple[int, int]
    rank: int
    nnz: int
    nnz_per_row: int | None
    pattern: Pattern
    binary: bool
    value_bits: int
    index_bits: int
    requested_ratio: float | None
    row_values: int = 0  # b-bit values stored per row (2 for a two-level code)
    quant: QuantLayout | None = None  # the quantised part, when the method stores one
    positions: str = "index"
    sparse_bits: int | None = None  # q: the values of S as q-bit codes with a b-bit scale per row
    l_group: int | None = None

    def position_bits(self, nnz: int | None = None) -> int:
        """Bits of the positions of S beyond ι per value: the bitmask (or N:M codes) when
        ``positions="bitmask"``, the Rice bound m·R_p(n, k) when ``positions="rice"``, and S holds
        entries (``nnz``, default the budget's), else 0."""
        nnz = self.nnz if nnz is None else nnz
        if not nnz or self.positions == "index":
            return 0
        if self.positions == "rice":
            m, n = self.shape
            return m * rice_bound(n, nnz // m)
        return bitmask_bits(self.shape, self.pattern)

    def exact_position_bits(self, indptr: np.ndarray, indices: np.ndarray) -> int:
        """What the positions of a solved S (CSR pattern, columns ascending per row) cost: the
        exact length of their Rice codes with ``positions="rice"`` (at most the bound), else
        :meth:`position_bits` of its nnz."""
        nnz = int(indptr[-1])
        if self.positions == "rice" and nnz:
            return rice_bits(indptr, indices, self.shape[1])
        return self.position_bits(nnz)

    def bits_with(self, nnz: int, position_bits: int) -> int:
        """bits(Ŵ) of this budget's parts with ``nnz`` stored values whose positions cost
        ``position_bits`` (the exact count of a solved S; :attr:`bits` charges the budget's own)."""
        return storage_bits(
            self.shape, nnz, self.rank, self.value_bits, self.index_bits, self.binary, self.row_values,
            quant=self.quant, position_bits=position_bits, sparse_bits=self.sparse_bits,
            l_group=self.l_group,
        )

    @property
    def bits(self) -> int:
        """(b + ι)·nnz + b·r·(m + n) + [B stored]·m·n (+ b·row_values·m for two-level codes)
        (+ the quantised part's bits) (+ the bitmask with ``positions="bitmask"``)."""
        return self.bits_with(self.nnz, self.position_bits())

    @property
    def l_groups(self) -> int:
        """Groups of input columns with their own factors of L: ⌈n/G⌉, or 1 without ``l_group``."""
        return 1 if self.l_group is None else -(-self.shape[1] // self.l_group)

    @property
    def dense_bits(self) -> int:
        """b·m·n, the dense layer at the same value precision."""
        m, n = self.shape
        return self.value_bits * m * n

    @property
    def ratio(self) -> float:
        """Achieved ratio 1 − bits / (b·m·n)."""
        return float(1 - Fraction(self.bits, self.dense_bits))

    @property
    def density(self) -> float:
        """nnz(S) / (m·n), the fraction of entries S keeps."""
        m, n = self.shape
        return self.nnz / (m * n)


def storage_bits(
    shape: tuple[int, int],
    nnz: int,
    rank: int,
    value_bits: int = 16,
    index_bits: int = 0,
    binary: bool = True,
    row_values: int = 0,
    *,
    quant: QuantLayout | None = None,
    position_bits: int = 0,
    sparse_bits: int | None = None,
    l_group: int | None = None,
) -> int:
    """bits(Ŵ) = (b + ι)·nnz + b·r·(m + n) + [binary]·m·n (+ b·row_values·m) (+ quant)
    (+ position_bits), exactly.

    ``sparse_bits`` = q stores the values of S as q-bit codes with one b-bit scale per row
    (docs/formulation.md §4.7): the first term becomes (q + ι)·nnz + [nnz > 0]·b·m.

    ``row_values`` counts b-bit values stored per row (2 for the two-level code of docs/formulation.md §2.1).
    ``quant`` is the layout of a quantised part: bits·m·n + b·(#scales + #zeros) (+ its group index).
    ``position_bits`` is a fixed count for the positions of S (:meth:`Budget.position_bits`).
    ``l_group`` = G stores L per group of G input columns: b·r·(m·⌈n/G⌉ + n) for the factors.
    """
    m, n = shape
    factor_rows = m * (1 if l_group is None else -(-n // l_group)) + n
    sparse = ((value_bits + index_bits) * nnz if sparse_bits is None
              else (sparse_bits + index_bits) * nnz + (value_bits * m if nnz else 0))
    return (
        position_bits
        + sparse
        + value_bits * rank * factor_rows
        + (m * n if binary else 0)
        + value_bits * row_values * m
        + (0 if quant is None else quant.storage_bits(value_bits))
    )


def max_rank_for_ratio(
    shape: tuple[int, int],
    ratio: float,
    value_bits: int = 16,
    *,
    binary: bool = False,
    row_values: int = 0,
) -> int | None:
    """Largest r ≤ min(m, n) with bits(k = 0, r) ≤ (1 − ratio)·b·m·n, or ``None`` if even r = 0 fails.

    bits(0, r) = b·r·(m + n) + [binary and r > 0]·m·n + b·row_values·m (B is only stored with a
    low-rank part); computed exactly in fractions.
    """
    m, n = shape
    allowed = (1 - Fraction(ratio)) * value_bits * m * n
    per_row = value_bits * row_values * m
    r = math.floor((allowed - per_row - (m * n if binary else 0)) / (value_bits * (m + n)))
    if r >= 1:
        return min(r, m, n)
    return 0 if per_row <= allowed else None


def _at_most(x: Fraction) -> str:
    """x > 0 written with at least 6 decimals, rounded down so that the float it reads as is ≤ x."""
    digits = 6
    while True:
        q = math.floor(x * 10**digits)
        text = f"{q // 10**digits}.{q % 10**digits:0{digits}d}"
        if Fraction(float(text)) > x:  # the decimal is <= x but its binary float is not
            q -= 1
            text = f"{q // 10**digits}.{q % 10**digits:0{digits}d}"
        if q > 0:
            return text
        digits += 1


def _infeasible_message(shape: tuple[int, int], ratio: float, rank: int, binary: bool,
                        best: Fraction, largest: int | None) -> str:
    """Why ``ratio`` is out of reach and what to ask for instead (only values in (0, 1) or ranks)."""
    head = (f"ratio {ratio} is not reachable for shape {shape} with rank {rank}"
            f"{' and a 1-bit sign matrix' if binary else ''}: ")
    lower = f"lower the rank to at most {largest} for ratio {ratio}" if largest is not None else ""
    if best <= 0:
        cost = "these fixed parts alone cost at least as much as the dense matrix"
        return head + cost + "; " + (lower or "no rank reaches any ratio in (0, 1) with this method")
    shown = _at_most(best)
    return (head + f"the largest reachable ratio is {shown} (no sparse values at all); ask for "
            f"ratio <= {shown}" + (f", or {lower}" if lower else ""))


def _quant_message(quant: QuantLayout | BinarizedLayout, ratio: float, value_bits: int, fixed: int,
                   dense: int) -> str:
    """Why a quantiser's fixed cost exceeds the requested ratio (= 1 − B/b for a budget of B bits
    per weight), and what to ask for instead. A binarized layout before solving counts the most
    salient columns its search can pick: an upper bound, its size being fixed by its algorithm."""
    m, n = quant.shape
    reached = 1 - Fraction(fixed, dense)
    bound = isinstance(quant, BinarizedLayout) and quant.salient_columns is None
    note = "; a size fixed by the algorithm, counted with the most salient columns it can pick" * bound
    head = (f"ratio {ratio} (= {float((1 - Fraction(ratio)) * value_bits):.4g} bits per weight) is not "
            f"reachable with {quant.describe()} for shape {(m, n)}: they cost {'up to ' if bound else ''}"
            f"{float(Fraction(fixed, m * n)):.4f} bits per weight (values at {value_bits} bits{note}), ")
    smaller = ("larger blocks (blocksize) or fewer candidate salient columns (salient_search)"
               if isinstance(quant, BinarizedLayout) else "fewer bits or larger groups")
    if reached <= 0:
        return head + (f"as much as the dense matrix or more; use {smaller}, or pass ratio=None to accept "
                       "this size")
    return head + (f"i.e. ratio {_at_most(reached)}; pass ratio=None to accept the ratio the "
                   f"quantiser reaches, ask for ratio <= {_at_most(reached)}, or use {smaller}")


def budget(shape: tuple[int, int], ratio: float | None = 0.5, rank: int = 64, *,
           pattern: str | Pattern = "row", value_bits: int = 16, index_bits: int = 0,
           components: frozenset[str] | set[str] | tuple[str, ...] = SLAB_COMPONENTS,
           quant: QuantLayout | None = None, positions: str = "index", sparse_bits: int | str | None = None,
           l_group: int | None = None) -> Budget:
    """How many sparse values fit in a layer of ``shape`` at ``ratio`` with rank ``rank``.

    The sparse budget is the largest k with ``ratio(k) >= ratio`` (docs/formulation.md §4.3), rounded
    down to a multiple of m for the equal-per-row pattern. N:M patterns fix nnz(S) = m·n·N/M; their achieved
    ratio may then differ from the requested one (``ratio`` may be ``None`` for them).

    Parameters
    ----------
    shape : (m, n)
    ratio : fraction of dense storage to remove, in (0, 1)
    rank : rank r of L (ignored, i.e. 0, when "lowrank" is not among ``components``)
    pattern : "row" (equal count per row), "global" (top-k over the matrix) or "N:M" such as "2:4"
    value_bits, index_bits : b and ι
    components : which of "sparse", "lowrank", "binary", "twolevel", "offset", "quant" the method
        stores
    quant : the :class:`slabopt.quantized.QuantLayout` of the quantised part; required exactly when
        "quant" is among ``components``. Its bits are fixed by the layout, so a method storing only
        a quantised part takes ``ratio=None`` (the achieved ratio is reported); a given ratio is
        checked, never exceeded (docs/formulation.md §4.4).
    positions : "index" (default: the positions of S cost ι = ``index_bits`` per value, 0 by the
        paper's convention) or "bitmask" (they cost what the saved format stores: a bitmask of m·n
        bits, or ⌈log₂ C(M, N)⌉ bits per group for N:M; ``index_bits`` must then be 0). With
        "bitmask" the mask is charged before the values, so the ratio is the ratio on disk
        (docs/formulation.md §4.6); "rice": Golomb–Rice codes of the gaps of each row (§4.8, "row"
        pattern); "auto": the cheapest exact code, "rice" for the "row" pattern, else "bitmask".
    sparse_bits : q in 2..8 stores the values of S as q-bit integer codes with one b-bit scale per
        row (docs/formulation.md §4.7), so each kept entry costs q + ι bits and the scales b·m;
        ``None`` (default) stores them at b bits. Only for the "row" and N:M patterns (an equal
        count per row). ``"auto"`` picks q per layer from the bits a per weight left for the values:
        q = round(a) + 1 in 2…8 (:func:`auto_sparse_bits`, docs/formulation.md §4.7).
        With ``positions="rice"`` the positions of each row are Golomb–Rice codes of the gaps,
        charged at their bound R_p(n, k) (:mod:`slabopt.positions`, §4.8; "row" pattern only).
    l_group : G stores L with its own factors per group of G input columns (b·r·(m·⌈n/G⌉ + n)
        bits, docs/formulation.md §2.5); ``None`` (default): one L = U Vᵀ.

    Raises
    ------
    InfeasibleBudgetError
        when even k = 0 does not reach ``ratio``; the message names the largest reachable ratio.
    """
    if isinstance(sparse_bits, str) and sparse_bits == "auto":
        return _auto_sparse_bits(shape, ratio, rank, pattern=pattern, value_bits=value_bits, quant=quant,
                                 index_bits=index_bits, components=components, positions=positions,
                                 l_group=l_group)
    st = _settings(shape, ratio, rank, pattern, value_bits, index_bits, components, quant, positions,
                   sparse_bits, l_group)
    spare = None if st.ratio is None else _spare_bits(st)
    return _budget_of(st, *_sparse_count(st, spare))


@dataclass(frozen=True)
class _Settings:
    """The checked arguments of :func:`budget` and what follows from them."""

    shape: tuple[int, int]
    ratio: Fraction | float | None
    rank: int
    pattern: Pattern
    value_bits: int
    index_bits: int
    components: frozenset
    quant: QuantLayout | None
    positions: str
    sparse_bits: int | None
    l_group: int | None
    binary: bool
    row_values: int


def _budget_of(st: _Settings, nnz: int, per_row: int | None) -> Budget:
    """The :class:`Budget` of the checked settings with ``nnz`` sparse values (``per_row`` a row)."""
    m, n = st.shape
    return Budget(
        shape=(m, n),
        rank=st.rank,
        nnz=nnz,
        nnz_per_row=per_row,
        pattern=st.pattern,
        binary=st.binary,
        value_bits=st.value_bits,
        index_bits=st.index_bits,
        requested_ratio=None if st.ratio is None else float(st.ratio),
        row_values=st.row_values,
        quant=st.quant,
        positions=st.positions,
        sparse_bits=st.sparse_bits,
        l_group=st.l_group,
    )


def _settings(shape, ratio, rank, pattern, value_bits, index_bits, components, quant, positions, sparse_bits,
              l_group) -> _Settings:
    """Every rule on the arguments of :func:`budget`, checked once (each failure one ValueError)."""
    m = check_int("shape[0]", shape[0], 1)
    n = check_int("shape[1]", shape[1], 1)
    value_bits = check_int("value_bits", value_bits, 1)
    index_bits = check_int("index_bits", index_bits, 0)
    positions = _check_positions(positions, index_bits)
    components = _check_components(components, quant, (m, n))
    rank = check_int("rank", rank, 0, min(m, n)) if "lowrank" in components else 0
    twolevel = "twolevel" in components
    pat = parse_pattern(pattern)
    if positions == "auto":  # the cheapest exact code: Rice codes never cost more than the bitmask
        positions = "rice" if pat.kind == "row" else "bitmask"
    sparse_bits = _check_sparse_bits(sparse_bits, pat, components)
    if positions == "rice" and pat.kind != "row":
        raise ValueError(f'positions="rice" needs pattern "row" (the same count in every row), got {pat}')
    if l_group is not None:
        l_group = check_int("l_group", l_group, 1)
    if pat.kind == "nm" and n % pat.m != 0:
        raise ValueError(f"pattern {pat} needs the number of columns n = {n} to be a multiple of {pat.m}")
    ratio = _check_ratio(ratio, pat, components)
    return _Settings((m, n), ratio, rank, pat, value_bits, index_bits, components, quant, positions,
                     sparse_bits, l_group, binary=("binary" in components and rank > 0) or twolevel,
                     row_values=2 if twolevel else (1 if "offset" in components else 0))


def _check_positions(positions: str, index_bits: int) -> str:
    """One of ``POSITIONS``; every code but "index" counts the positions itself, so ι must be 0."""
    positions = check_choice("positions", positions, POSITIONS)
    if positions != "index" and index_bits:
        raise ValueError(f'positions="{positions}" counts the positions of S itself; index_bits must be 0, '
                         f"got {index_bits}")
    return positions


def _check_ratio(ratio: float | None, pat: Pattern, components: frozenset) -> float | None:
    """The checked ratio in (0, 1); ``None`` only where nnz(S) is fixed (N:M) or there is no S."""
    if ratio is not None:
        return check_ratio("ratio", ratio)
    if pat.kind != "nm" and "sparse" in components:
        raise ValueError("ratio=None is only allowed for N:M patterns, which fix nnz(S)")
    return None


def _check_components(components, quant: QuantLayout | None, shape: tuple[int, int]) -> frozenset:
    """The stored parts as a frozenset of ``COMPONENTS``, with ``quant`` given exactly when "quant" is one."""
    components = frozenset(components)
    unknown = components - COMPONENTS
    if unknown or not components:
        raise ValueError(
            f"components must be a non-empty subset of {sorted(COMPONENTS)}, got {sorted(components)}"
        )
    if ("quant" in components) != (quant is not None):
        raise ValueError('give quant (a QuantLayout) exactly when "quant" is among the components')
    if quant is not None and tuple(quant.shape) != shape:
        raise ValueError(f"quant layout has shape {tuple(quant.shape)}, the layer {shape}")
    return components


def _fixed_bits(st: _Settings) -> tuple[int, int]:
    """(bits of everything but the values of S, bits of the bitmask among them)."""
    charged = st.positions == "bitmask" and "sparse" in st.components
    mask = bitmask_bits(st.shape, st.pattern) if charged else 0
    fixed = storage_bits(st.shape, 0, st.rank, st.value_bits, st.index_bits, st.binary, st.row_values,
                         quant=st.quant, position_bits=mask, l_group=st.l_group)
    return fixed, mask


def _spare_bits(st: _Settings) -> Fraction:
    """Bits the ratio leaves for the values of S (and their row scales): (1 − ratio)·b·m·n − fixed;
    raises InfeasibleBudgetError when that is negative."""
    m, n = st.shape
    fixed, mask = _fixed_bits(st)
    dense = st.value_bits * m * n
    spare = (1 - Fraction(st.ratio)) * dense - fixed
    if mask and st.pattern.kind != "nm" and -mask <= spare < 0:
        spare = Fraction(0)  # room for no bitmask: S stays empty and stores none
    if st.sparse_bits is not None and st.pattern.kind != "nm":
        spare = max(spare - st.value_bits * m, Fraction(0)) if spare >= 0 else spare  # row scales
    if spare < 0 and st.quant is not None:
        raise InfeasibleBudgetError(_quant_message(st.quant, st.ratio, st.value_bits, fixed, dense))
    if spare < 0:
        largest = max_rank_for_ratio((m, n), st.ratio, st.value_bits, binary="binary" in st.components,
                                     row_values=st.row_values) if "lowrank" in st.components else None
        raise InfeasibleBudgetError(_infeasible_message((m, n), st.ratio, st.rank, st.binary,
                                                        1 - Fraction(fixed, dense), largest))
    return spare


def _sparse_count(st: _Settings, spare: Fraction | None) -> tuple[int, int | None]:
    """(nnz, per row): fixed by an N:M pattern, else the most values the ``spare`` bits hold."""
    m, n = st.shape
    if "sparse" not in st.components:
        return 0, 0
    if st.pattern.kind == "nm":
        per_row = n // st.pattern.m * st.pattern.n
        return m * per_row, per_row
    per_value = (st.value_bits if st.sparse_bits is None else st.sparse_bits) + st.index_bits
    if st.positions == "rice":
        per_row = rice_count(n, per_value, spare / m)
        return per_row * m, per_row
    k = min(math.floor(spare / per_value), m * n)
    if st.pattern.kind == "row":
        return k // m * m, k // m
    return k, None


def rice_count(n: int, per_value: int, allowed: Fraction) -> int:
    """The largest k ≤ n with per_value·k + R_p(n, k) ≤ ``allowed`` bits (0 if none): the count per
    row that fits when positions are Rice codes (every k is tried: the cost is not monotone, as a
    nearly full row codes its few left-out positions)."""
    cost = per_value * np.arange(n + 1, dtype=np.int64) + rice_bounds(n)
    fits = np.flatnonzero(cost <= allowed)
    return int(fits[-1]) if fits.size else 0


SPARSE_BITS = (2, 8)  # the q allowed for codes of the values of S
def auto_sparse_bits(value_bits_per_weight: float) -> int:
    """q = round(a) + 1 clamped to 2…8, for a = the bits per weight the budget leaves for the values
    of S (so S keeps about a/(a + 1) of the entries; docs/formulation.md §4.7)."""
    return min(max(round(value_bits_per_weight) + 1, SPARSE_BITS[0]), SPARSE_BITS[1])


def _auto_sparse_bits(shape: tuple[int, int], ratio: float | None, rank: int, **kw) -> Budget:
    """The budget at q = :func:`auto_sparse_bits` (a measured at q = 8); for N:M patterns, which fix
    nnz(S), the largest q whose bits fit ``ratio`` (8 without a ratio)."""
    at8 = budget(shape, ratio, rank, sparse_bits=8, **kw)
    if at8.pattern.kind == "nm":
        if ratio is None:
            return at8
        allowed = (1 - Fraction(ratio)) * at8.dense_bits
        fits = [q for q in range(SPARSE_BITS[1], SPARSE_BITS[0] - 1, -1)
                if budget(shape, ratio, rank, sparse_bits=q, **kw).bits <= allowed]
        return budget(shape, ratio, rank, sparse_bits=fits[0] if fits else SPARSE_BITS[0], **kw)
    a = 8.0 * at8.density if at8.density < 1 else float(SPARSE_BITS[1])
    return budget(shape, ratio, rank, sparse_bits=auto_sparse_bits(a), **kw)


def _check_sparse_bits(sparse_bits: int | None, pat: Pattern, components: frozenset[str]) -> int | None:
    """``None``, or q in [2, 8] for a method with a sparse part and an equal count per row."""
    if sparse_bits is None:
        return None
    if isinstance(sparse_bits, str):
        raise ValueError(f'sparse_bits must be an integer in [2, 8], "auto" or None, got {sparse_bits!r}')
    sparse_bits = check_int("sparse_bits", sparse_bits, *SPARSE_BITS)
    if "sparse" not in components:
        raise ValueError("sparse_bits quantises the values of S; this method stores no sparse part")
    if pat.kind == "global":
        raise ValueError('sparse_bits needs an equal count per row: pattern "row" or N:M, not "global"')
    return sparse_bits
