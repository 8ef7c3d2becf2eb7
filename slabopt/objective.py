"""The two objectives of docs/formulation.md §3.

diagonal  f(Ŵ) = ‖(W − Ŵ) D‖_F²,  D = diag(d), d_j = ‖X[:, j]‖₂
full      g(Ŵ) = tr((W − Ŵ) H (W − Ŵ)ᵀ),  H = XᵀX + λ·mean(diag XᵀX)·I
"""

from __future__ import annotations

from collections.abc import Callable
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
    return trace_form(E, damped_gram(gram, damping))


def trace_form(E: Any, H: Any) -> float:
    """tr(E H Eᵀ) = Σ_ij (E H)_ij E_ij for a given (damped) H."""
    return bk.to_float(bk.namespace(E).sum((E @ H) * E))


def blockwise_objectives(
    W: Any,
    weight_rows: Callable[[slice], Any],
    d: Any,
    gram: Any = None,
    damping: float = DEFAULT_DAMPING,
    blocks: list[slice] | None = None,
) -> Objectives:
    """Both objectives of Ŵ given by its rows, Ŵ[rows] = ``weight_rows(rows)``, summed block by
    block: f = Σ_b ‖(W_b − Ŵ_b) D‖_F², g = Σ_b tr(E_b H E_bᵀ) (``None`` without ``gram``).

    Both are sums over rows, so only one block of Ŵ and of E = W − Ŵ exists at a time (no m×n
    temporaries); ``blocks`` defaults to :func:`slabopt._backend.row_blocks`.
    """
    m, n = W.shape
    H = None if gram is None else damped_gram(gram, damping)
    f, g = 0.0, 0.0
    for rows in bk.row_blocks(m, n) if blocks is None else blocks:
        E = W[rows, :] - weight_rows(rows)
        f += diagonal_objective(E, d)
        if H is not None:
            g += trace_form(E, H)
    return Objectives(diagonal=f, full=None if H is None else g)


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
