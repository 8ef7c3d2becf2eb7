"""Checks of everything a caller passes in, in one place.

Each check either returns the value in its canonical type or raises ``TypeError`` (wrong kind of
value) or ``ValueError`` (right kind, not allowed) with a one-line message that names the argument
and says what is allowed. The numerical kernels behind these checks assume clean input.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _backend as bk


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An integer in [low, high] (``high=None``: [low, ∞)); bools are refused."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = value.__index__()
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def _real(name: str, value: Any, kind: str) -> float:
    """``value`` as a Python float if it is a real number (not a bool), else ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number{kind}, got {type(value).__name__}")
    return float(value)


def check_real(name: str, value: Any, low: float, high: float | None = None) -> float:
    """A finite real in [low, high] (``high=None``: [low, ∞))."""
    value = _real(name, value, "")
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def check_ratio(name: str, value: Any) -> float:
    """A finite real in the open interval (0, 1) -- a fraction of dense storage removed."""
    value = _real(name, value, " in (0, 1)")
    if not (math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"{name} must be a finite number in the open interval (0, 1), got {value}")
    return value


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """One of the strings in ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


def _as_array(name: str, x: Any) -> Any:
    """``x`` as a NumPy/PyTorch/CuPy array: array-likes through ``numpy.asarray`` (ints → float64),
    tensors that require grad detached from their autograd graph (no copy)."""
    try:
        library = bk.library_name(x)
    except TypeError:
        library = None
    if library == "torch" and x.requires_grad:
        return x.detach()
    if library is not None:
        return x
    try:
        x = np.asarray(x)
    except Exception as exc:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}") from exc
    return x.astype(np.float64) if x.dtype.kind in "iub" else x


def as_matrix(name: str, x: Any, ndim: int = 2) -> Any:
    """Check that ``x`` is a finite, non-empty, real floating ``ndim``-D array; return it.

    Lists and other array-likes are converted with ``numpy.asarray``. Never modifies ``x``.
    """
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    x = _as_array(name, x)
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


def _norms_from_inputs(W: Any, X: Any, need_gram: bool) -> tuple[Any, Any, Any]:
    """(d, X, G) from raw inputs X (N×n): d_j = ‖X[:, j]‖₂, G = XᵀX when ``need_gram``."""
    xp = bk.namespace(W)
    n = W.shape[1]
    Xc = _cast_like(as_matrix("X", X), W)
    if Xc.shape[1] != n:
        raise ValueError(
            f"X has {Xc.shape[1]} columns but W has n = {n}; X must be (N × n) with the "
            "layer's inputs as rows"
        )
    G = xp.matrix_transpose(Xc) @ Xc if need_gram else None
    return xp.linalg.vector_norm(Xc, axis=0), Xc, G


def _norms_given(W: Any, col_norms: Any) -> Any:
    """d given directly: a non-negative vector of length n."""
    xp = bk.namespace(W)
    n = W.shape[1]
    d = _cast_like(as_matrix("col_norms", col_norms, ndim=1), W)
    if d.shape[0] != n:
        raise ValueError(f"col_norms has length {d.shape[0]}, expected n = {n}")
    if bool(xp.any(d < 0)):
        raise ValueError("col_norms must be non-negative (they are the norms ‖X[:, j]‖₂)")
    return d


def _norms_from_gram(W: Any, gram: Any) -> tuple[Any, Any]:
    """(d, G) from the Gram matrix G = XᵀX (n×n): d_j = √G_jj."""
    xp = bk.namespace(W)
    n = W.shape[1]
    G = _cast_like(as_matrix("gram", gram), W)
    if tuple(G.shape) != (n, n):
        raise ValueError(f"gram must be n × n = {n} × {n}, got {tuple(G.shape)}")
    diag = xp.linalg.diagonal(G)
    if bool(xp.any(diag < 0)):
        raise ValueError("gram must be XᵀX: its diagonal has negative entries")
    return xp.sqrt(diag), G


def _cast_like(a: Any, W: Any) -> Any:
    """``a`` in W's library, device and dtype."""
    return bk.namespace(W).astype(bk.convert_like(a, W), W.dtype)


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
    given = [k for k, v in (("X", X), ("col_norms", col_norms), ("gram", gram)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one of X, col_norms, gram; got {', '.join(given)}")
    Xc = G = None
    if X is not None:
        d, Xc, G = _norms_from_inputs(W, X, need_gram)
    elif col_norms is not None:
        d = _norms_given(W, col_norms)
    elif gram is not None:
        d, G = _norms_from_gram(W, gram)
    else:
        d = xp.ones(W.shape[1], dtype=W.dtype, device=bk.device(W))
    if not allow_zero and not bool(xp.any(d > 0)):
        raise ValueError(
            "the activations are all zero (every ‖X[:, j]‖ = 0), so they carry no information "
            "about the layer; pass X=None for an unweighted decomposition"
        )
    return d, Xc, G
