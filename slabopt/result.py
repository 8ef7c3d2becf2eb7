"""The one result type of :func:`slabopt.solve`, and the compact sparse matrix it holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _backend as bk
from .budget import Budget
from .quantized import QuantizedMatrix
from .signs import unpack_signs
from .weight import dense_weight


@dataclass(frozen=True)
class SparseMatrix:
    """S in compressed sparse row form, in the caller's array library and device.

    Row i holds the values ``values[indptr[i]:indptr[i+1]]`` at columns
    ``indices[indptr[i]:indptr[i+1]]`` (ascending). For the "row" and N:M patterns every row has
    the same count, so ``values.reshape(m, -1)`` is the fixed-width layout.
    """

    indptr: Any
    indices: Any
    values: Any
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return int(self.values.shape[0])

    @classmethod
    def from_mask(cls, S: Any, mask: Any) -> SparseMatrix:
        """Compact the dense ``S`` at the True entries of ``mask`` (row-major order), one block of
        rows at a time (:func:`slabopt._backend.row_blocks`: no m×n index temporaries)."""
        xp = bk.namespace(S)
        m, n = S.shape
        dev = bk.device(S)
        counts = xp.astype(xp.count_nonzero(mask, axis=1), xp.int64)
        indptr = xp.concat([xp.zeros(1, dtype=xp.int64, device=dev), xp.cumulative_sum(counts)])
        starts = bk.to_numpy(indptr).tolist()
        values = xp.empty(starts[-1], dtype=S.dtype, device=dev)
        cols = xp.empty(starts[-1], dtype=xp.int32, device=dev)
        for rows in bk.row_blocks(m, n):
            at = slice(starts[rows.start], starts[rows.stop])
            flat = xp.nonzero(xp.reshape(mask[rows, :], (-1,)))[0]  # positions i·n + j in the block
            cols[at] = xp.astype(flat % n, xp.int32)
            values[at] = xp.take(xp.reshape(S[rows, :], (-1,)), flat)
        return cls(indptr, cols, values, (m, n))

    def to_dense(self) -> Any:
        """The m×n dense S."""
        xp = bk.namespace(self.values)
        m, n = self.shape
        counts = self.indptr[1:] - self.indptr[:-1]
        rows = xp.repeat(xp.arange(m, device=bk.device(self.values)), counts)
        flat = bk.scatter(xp, m * n, rows * n + xp.astype(self.indices, rows.dtype), self.values, 0)
        return xp.reshape(flat, (m, n))


@dataclass
class SolveResult:
    """Result of :func:`slabopt.solve`: Ŵ = S + (U Vᵀ) ⊙ B (+ a two-level code, a per-row offset or a
    quantised matrix) and how well and how cheaply it fits.

    Attributes
    ----------
    method : the solver's registered name
    sparse : :class:`SparseMatrix` S (``nnz`` = 0 for methods without a sparse part)
    U, V : factors of L = U Vᵀ, m×r and n×r (``None`` without a low-rank part)
    levels : two-level code, 2×m (row 0 low, row 1 high value of each row, picked by B = +1 for
        high), ``None`` unless the method stores one ("two_level")
    row_offset : per-row offset c (m values) added as c·1ᵀ, ``None`` unless stored ("slab_offset")
    quant : :class:`slabopt.QuantizedMatrix` (integer codes, scales, zero points) added as
        scale·(code − zero), ``None`` unless stored ("rtn", "gptq"; docs/formulation.md §2.3)
    sparse_codes : the kept values of S as q-bit codes with a scale per row (m×k
        :class:`slabopt.QuantizedMatrix`, symmetric, per output channel) when ``sparse_bits`` was
        given; ``sparse.values`` then holds their decoded values (docs/formulation.md §4.7)
    signs_packed : B packed 8 signs per byte, m×ceil(n/8) uint8 (``None`` when B is not stored);
        see :func:`slabopt.signs.unpack_signs` and :meth:`signs`
    bits, ratio : achieved storage in bits and fraction of dense storage removed (docs/formulation.md §4)
    requested_ratio : the ratio asked for (``None`` when none was given, e.g. for "rtn" and "gptq",
        whose bits are fixed by the quantiser)
    budget : the :class:`slabopt.Budget` the solver was given
    objective : diagonal objective f(Ŵ) = ‖(W − Ŵ)D‖_F² of the returned Ŵ
    objective_full : full objective g(Ŵ) when X or the Gram matrix was given, else ``None``
    objective_zero : f(0) = ‖W D‖_F², so ``objective / objective_zero`` is the relative error
    history : objective after each iteration (floats, in the user's units)
    n_iter, converged, message : iteration count and stopping information
    settings : every setting used (ratio, rank, pattern, bits, seed, method options, ...)
    wall_time : seconds spent in the solver (validation and packing included)
    info : method-specific extras (e.g. residual histories)
    """

    method: str
    shape: tuple[int, int]
    sparse: SparseMatrix
    U: Any
    V: Any
    signs_packed: Any
    bits: int
    dense_bits: int
    requested_ratio: float | None
    budget: Budget
    objective: float
    objective_full: float | None
    objective_zero: float
    history: list[float]
    n_iter: int
    converged: bool
    message: str
    settings: dict
    wall_time: float
    dtype: Any
    info: dict = field(default_factory=dict)
    levels: Any = None
    row_offset: Any = None
    quant: QuantizedMatrix | None = None
    sparse_codes: QuantizedMatrix | None = None

    @property
    def ratio(self) -> float:
        """Achieved ratio 1 − bits / (b·m·n)."""
        return 1.0 - self.bits / self.dense_bits

    @property
    def rank(self) -> int:
        """r, the rank of L (of each group's L when L is stored per group of columns)."""
        return 0 if self.U is None else int(self.U.shape[1]) // self.budget.l_groups

    @property
    def relative_error(self) -> float:
        """f(Ŵ) / f(0) = ‖(W − Ŵ)D‖² / ‖W D‖²."""
        return self.objective / self.objective_zero if self.objective_zero > 0 else 0.0

    def _xp(self) -> Any:
        return bk.namespace(self.sparse.values)

    def signs(self) -> Any:
        """Dense ±1 matrix B (m×n, compute dtype); ``None`` when B is not stored."""
        if self.signs_packed is None:
            return None
        return unpack_signs(self.signs_packed, self.shape[1], self.sparse.values.dtype)

    def low_rank(self) -> Any:
        """Dense L = U Vᵀ, or ``None``."""
        if self.U is None:
            return None
        return self.U @ self._xp().matrix_transpose(self.V)

    def reconstruct(self, dtype: Any = None) -> Any:
        """Ŵ = :func:`slabopt.dense_weight` of the stored parts, cast to W's dtype by default."""
        W_hat = dense_weight(self.sparse.to_dense(), U=self.U, V=self.V, B=self.signs(),
                             levels=self.levels, row_offset=self.row_offset, quant=self.quant)
        return self._xp().astype(W_hat, self.dtype if dtype is None else dtype)

    def __repr__(self) -> str:
        m, n = self.shape
        return (
            f"SolveResult(method={self.method!r}, shape=({m}, {n}), rank={self.rank}, "
            f"nnz={self.sparse.nnz}, ratio={self.ratio:.4f}, "
            f"relative_error={self.relative_error:.4g}, n_iter={self.n_iter}, "
            f"wall_time={self.wall_time:.3g}s)"
        )
