"""The validated problem a solver receives, and the decomposition it returns.

The checks of the caller's input live in :mod:`slabopt._validation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from . import _backend as bk
from .budget import Budget
from .linalg import damped_gram


@dataclass
class Problem:
    """A validated decomposition problem, in the caller's array library and device.

    ``W`` is in the compute dtype (float64 for float64 input, float32 otherwise) and is a copy
    whenever a conversion happened; solvers must not modify it in place. ``d`` is the column
    weight vector rescaled to max 1 (``d_true = d_scale · d``; any positive rescaling leaves the
    minimisers unchanged, docs/formulation.md §3.1).
    """

    W: Any
    d: Any
    d_scale: float
    budget: Budget
    X: Any = None
    raw_gram: Any = None
    seed: int = 0
    max_iter: int = 20
    tol: float = 1e-6
    damping: float = 0.01
    callback: Callable[[int, float], Any] | None = None

    @property
    def xp(self) -> Any:
        return bk.namespace(self.W)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W.shape)  # type: ignore[return-value]

    @cached_property
    def gram(self) -> Any:
        """Undamped Gram matrix XᵀX rescaled by 1/d_scale² (so diag = d²); ``None`` if unknown."""
        xp = self.xp
        if self.raw_gram is not None:
            return self.raw_gram / self.d_scale**2
        if self.X is not None:
            Xs = self.X / self.d_scale
            return xp.matrix_transpose(Xs) @ Xs
        return None

    @cached_property
    def hessian(self) -> Any:
        """Damped H = XᵀX + λ·mean(diag)·I in the rescaled units of :attr:`gram`."""
        return None if self.gram is None else damped_gram(self.gram, self.damping)

    @property
    def d_inv(self) -> Any:
        """1/d_j where d_j > 0 and 0 at dead columns (their weights never matter to f)."""
        xp = self.xp
        safe = xp.where(self.d > 0, self.d, xp.ones_like(self.d))
        return xp.where(self.d > 0, 1 / safe, xp.zeros_like(self.d))

    def report(self, iteration: int, value: float) -> None:
        if self.callback is not None:
            self.callback(iteration, value)

    def stalled(self, history: list[float]) -> bool:
        """Stopping rule |f_{t−1} − f_t| ≤ tol · max(f_{t−1}, 2⁻⁵²) on the last two objective values."""
        return len(history) > 1 and abs(history[-2] - history[-1]) <= self.tol * max(
            history[-2], math.ulp(1.0)
        )

    def record(self, history: list[float], value: float) -> bool:
        """Append f_t to ``history``, report (t, f_t) and return whether :meth:`stalled` holds."""
        history.append(value)
        self.report(len(history), value)
        return self.stalled(history)

    def stop_message(self, converged: bool) -> str:
        """Why a loop ended: the ``tol`` rule of :meth:`stalled`, or the ``max_iter`` limit."""
        if converged:
            return f"relative objective change <= tol = {self.tol:g}"
        return f"max_iter = {self.max_iter} iterations reached"


@dataclass
class Decomposition:
    """What a solver returns; ``solve`` turns it into a :class:`slabopt.SolveResult`.

    ``S`` is dense (m×n, zero off ``mask``), ``U`` (m×r) and ``V`` (n×r) give L = U Vᵀ, ``B`` is
    the dense ±1 matrix or a boolean matrix (True = +1); ``levels`` (2×m: row 0 low, row 1 high)
    is a per-row two-level code picked by B (True = high), ``row_offset`` (m) a per-row offset c,
    ``quant`` a :class:`slabopt.QuantizedMatrix` (integer codes with scales and zero points);
    ``sparse_codes`` the kept values of S as an m×k :class:`slabopt.QuantizedMatrix` when they are
    stored as codes (``sparse_bits``; then ``S`` holds the decoded values);
    parts a method does not store are ``None``. Together they give Ŵ =
    :func:`slabopt.dense_weight` (S, U, V, B, levels, row_offset, quant). ``history`` holds the
    objective the method minimises after each iteration.
    """

    S: Any = None
    mask: Any = None
    U: Any = None
    V: Any = None
    B: Any = None
    levels: Any = None
    row_offset: Any = None
    quant: Any = None
    sparse_codes: Any = None
    history: list[float] = field(default_factory=list)
    converged: bool = True
    message: str = ""
    info: dict = field(default_factory=dict)
