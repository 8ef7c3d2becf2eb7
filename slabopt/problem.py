"""Input validation at the boundary, and the validated problem a solver receives.

Everything a user can get wrong is caught here with a message that says what was wrong and what is
allowed; the numerical kernels behind it assume clean input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from . import _backend as bk
from .budget import Budget


def as_matrix(name: str, x: Any, ndim: int = 2) -> Any:
    """Check that ``x`` is a finite, non-empty, real floating ``ndim``-D array; return it.

    Lists and other array-likes are converted with ``numpy.asarray``. Never modifies ``x``.
    """
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        bk.library_name(x)
    except TypeError:
        try:
            x = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
        if x.dtype.kind in "iub":
            x = x.astype(np.float64)
    kind = bk.dtype_name(x)
    if kind not in bk.FLOAT_DTYPE_NAMES:
        raise TypeError(
            f"{name} has dtype {kind}; allowed dtypes: {', '.join(bk.FLOAT_DTYPE_NAMES)} "
            "(real floating point)"
        )
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got {x.ndim}-D with shape {tuple(x.shape)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    xp = bk.namespace(x)
    finite = xp.isfinite(x)
    if not bool(xp.all(finite)):
        bad = int(xp.sum(xp.astype(~finite, xp.int64)))
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); all entries must be finite")
    return x


def resolve_activations(
    W: Any,
    X: Any,
    col_norms: Any,
    gram: Any,
    *,
    need_gram: bool,
    allow_zero: bool = False,
) -> tuple[Any, Any, Any]:
    """Column weights d (n), raw inputs X (N×n or None) and Gram matrix XᵀX (n×n or None).

    Exactly one of ``X``, ``col_norms``, ``gram`` may be given; none means unweighted (d = 1).
    All are returned in ``W``'s library, device and dtype. The Gram matrix is formed from ``X``
    only when ``need_gram``.
    """
    xp = bk.namespace(W)
    n = W.shape[1]
    given = [k for k, v in (("X", X), ("col_norms", col_norms), ("gram", gram)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of X, col_norms, gram; got {', '.join(given)}")

    def cast(a: Any) -> Any:
        return xp.astype(bk.convert_like(a, W), W.dtype)

    Xc = G = None
    if X is not None:
        Xc = cast(as_matrix("X", X))
        if Xc.shape[1] != n:
            raise ValueError(
                f"X has {Xc.shape[1]} columns but W has n = {n}; X must be (N × n) with the "
                "layer's inputs as rows"
            )
        d = xp.linalg.vector_norm(Xc, axis=0)
        if need_gram:
            G = xp.matrix_transpose(Xc) @ Xc
    elif col_norms is not None:
        d = cast(as_matrix("col_norms", col_norms, ndim=1))
        if d.shape[0] != n:
            raise ValueError(f"col_norms has length {d.shape[0]}, expected n = {n}")
        if bool(xp.any(d < 0)):
            raise ValueError("col_norms must be non-negative (they are the norms ‖X[:, j]‖₂)")
    elif gram is not None:
        G = cast(as_matrix("gram", gram))
        if tuple(G.shape) != (n, n):
            raise ValueError(f"gram must be n × n = {n} × {n}, got {tuple(G.shape)}")
        diag = xp.linalg.diagonal(G)
        if bool(xp.any(diag < 0)):
            raise ValueError("gram must be XᵀX: its diagonal has negative entries")
        d = xp.sqrt(diag)
    else:
        d = xp.ones(n, dtype=W.dtype, device=bk.device(W))
    if not allow_zero and not bool(xp.any(d > 0)):
        raise ValueError(
            "the activations are all zero (every ‖X[:, j]‖ = 0), so they carry no information "
            "about the layer; pass X=None for an unweighted decomposition"
        )
    return d, Xc, G


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


def check_real(name: str, value: Any, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


@dataclass
class Problem:
    """A validated decomposition problem, in the caller's array library and device.

    ``W`` is in the compute dtype (float64 for float64 input, float32 otherwise) and is a copy
    whenever a conversion happened; solvers must not modify it in place. ``d`` is the column
    weight vector rescaled to max 1 (``d_true = d_scale · d``; any positive rescaling leaves the
    minimisers unchanged, SPEC §1).
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
    extras: dict = field(default_factory=dict)

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
        from .objective import damped_gram

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


@dataclass
class Decomposition:
    """What a solver returns; ``solve`` turns it into a :class:`slabopt.SolveResult`.

    ``S`` is dense (m×n, zero off ``mask``), ``U`` (m×r) and ``V`` (n×r) give L = U Vᵀ, ``B`` is
    the dense ±1 matrix or a boolean matrix (True = +1); parts a method does not store are
    ``None``. ``history`` holds the objective it minimises after each iteration.
    """

    S: Any = None
    mask: Any = None
    U: Any = None
    V: Any = None
    B: Any = None
    history: list[float] = field(default_factory=list)
    converged: bool = True
    message: str = ""
    info: dict = field(default_factory=dict)
