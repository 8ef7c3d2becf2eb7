"""The two objectives of docs/formulation.md §3.

diagonal  f(Ŵ) = ‖(W − Ŵ) D‖_F²,  D = diag(d), d_j = ‖X[:, j]‖₂
full      g(Ŵ) = tr((W − Ŵ) H (W − Ŵ)ᵀ),  H = XᵀX + λ·mean(diag XᵀX)·I
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _backend as bk
from ._validation import as_matrix, resolve_activations
from .linalg import DEFAULT_DAMPING, damped_gram


class Objectives(NamedTuple):
    diagonal: float
    full: float | None


def diagonal_objective(E: Any, d: Any) -> float:
    """f = Σ_ij d_j² E_ij² for the error E = W − Ŵ."""
    xp = bk.namespace(E)
    return bk.to_float(xp.sum((E * d) ** 2))


def full_objective(E: Any, gram: Any, damping: float = DEFAULT_DAMPING) -> float:
    """g = tr(E H Eᵀ) with H the damped Gram matrix of the undamped ``gram`` = XᵀX."""
    xp = bk.namespace(E)
    H = damped_gram(gram, damping)
    return bk.to_float(xp.sum((E @ H) * E))


def objective(
    W: Any,
    W_hat: Any,
    X: Any = None,
    *,
    col_norms: Any = None,
    gram: Any = None,
    damping: float = DEFAULT_DAMPING,
) -> Objectives:
    """Both objectives of ``W_hat`` as an approximation of ``W``.

    The activations come as raw inputs ``X`` (N×n), as ``col_norms`` d, or as ``gram`` = XᵀX
    (undamped). ``full`` is ``None`` when only d is known. With ``X=None`` and no statistics the
    diagonal objective is unweighted (d = 1).
    """
    W_ = as_matrix("W", W)
    xp = bk.namespace(W_)
    Wc = xp.astype(W_, bk.compute_dtype(xp, W_))
    Wh = xp.astype(bk.convert_like(as_matrix("W_hat", W_hat), W_), Wc.dtype)
    if Wh.shape != Wc.shape:
        raise ValueError(f"W_hat has shape {tuple(Wh.shape)}, W has {tuple(Wc.shape)}")
    d, _, G = resolve_activations(Wc, X, col_norms, gram, need_gram=True, allow_zero=True)
    E = Wc - Wh
    return Objectives(
        diagonal=diagonal_objective(E, d),
        full=None if G is None else full_objective(E, G, damping),
    )
