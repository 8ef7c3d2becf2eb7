"""Exact least-squares refit of the scales of S + L ⊙ B under the full objective (docs/formulation.md §5.8).

With the signs B, the mask and the codes of S fixed, a rank-1 L stored per group of columns
(l_ij = a_{i,g(j)} c_j) and the codes of S scaled per row (s_ij = τ_i t_ij, t_ij = code − 2^(q−1)
on the mask, 0 off it), Ŵ is linear in the row unknowns x_i = (a_i1, …, a_iG, τ_i) and, separately,
in the column factors c. So each of the two block steps of

    g(Ŵ) = tr((W − Ŵ) H (W − Ŵ)ᵀ),   H = XᵀX + λ·mean(diag)·I,

has a closed form:

* **rows**: ŵ_i = Z_i x_i with Z_i the (G+1)×n matrix whose row g is c ⊙ b_i on group g's columns
  (0 elsewhere) and whose last row is t_i, so x_i = (Z_i H Z_iᵀ)⁻¹ Z_i H w_i;
* **columns**: ŵ_i = u_i ⊙ c + τ_i t_i with u_ij = a_{i,g(j)} b_ij, so
  (H ⊙ UᵀU) c = diag(Uᵀ (W − τ ⊙ T) H), an n×n positive-definite system (Schur product theorem).

Alternating them never raises g (each step is an exact minimiser; a step that would is not taken).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from ..objective import trace_form


def _group_products(signed: np.ndarray, groups: np.ndarray, H: np.ndarray) -> list[tuple]:
    """For each group g: (its columns, Z_g H) with Z_g = c ⊙ b on the group's columns, 0 elsewhere
    (``signed`` = c ⊙ b); one m×n×n product in all."""
    cols = [np.flatnonzero(groups == g) for g in range(int(groups.max()) + 1)]
    return [(j, signed[:, j] @ H[j, :]) for j in cols]


def _rows_solve(W: np.ndarray, signed: np.ndarray, parts: list[tuple], T: np.ndarray,
                TH: np.ndarray) -> np.ndarray:
    """x_i = (Z_i H Z_iᵀ)⁺ Z_i H w_i from the products Z_g H (``parts``) and T H."""
    ZH = [zh for _, zh in parts] + [TH]
    Z_at = [(signed[:, j], j) for j, _ in parts] + [(T, slice(None))]
    G = np.stack([np.stack([np.einsum("ij,ij->i", zh[:, j], z) for z, j in Z_at], axis=-1) for zh in ZH],
                 axis=1)
    rhs = np.stack([np.einsum("ij,ij->i", zh, W) for zh in ZH], axis=-1)
    return (np.linalg.pinv(G, rcond=1e-13, hermitian=True) @ rhs[..., None])[..., 0]


def refit_rows(W: np.ndarray, H: np.ndarray, B: np.ndarray, c: np.ndarray, groups: np.ndarray,
               T: np.ndarray) -> np.ndarray:
    """x_i = (Z_i H Z_iᵀ)⁺ Z_i H w_i for every row: the m×(G+1) matrix [a | τ] (the least-norm
    solution where a row's system is singular, e.g. a row of S with no codes)."""
    signed = np.where(B, c, -c)
    return _rows_solve(W, signed, _group_products(signed, groups, H), T, T @ H)


def _columns_solve(B: np.ndarray, a: np.ndarray, groups: np.ndarray, H: np.ndarray, R: np.ndarray,
                   RH: np.ndarray) -> tuple[np.ndarray, float]:
    """(c, g at c): c solves (H ⊙ UᵀU) c = diag(Uᵀ R H) for R = W − τ ⊙ T (``RH`` = R H), and at
    that minimiser g = tr(R H Rᵀ) − cᵀ diag(Uᵀ R H)."""
    U = np.where(B, a[:, groups], -a[:, groups])
    A = H * (U.T @ U)
    rhs = np.einsum("ij,ij->j", U, RH)
    try:
        c = cho_solve(cho_factor(A), rhs)
    except np.linalg.LinAlgError:  # a column with u = 0 (all its a's are 0): least norm
        c = np.linalg.lstsq(A, rhs, rcond=None)[0]
    return c, float(np.sum(RH * R) - c @ rhs)


def refit_columns(W: np.ndarray, H: np.ndarray, B: np.ndarray, a: np.ndarray, groups: np.ndarray,
                  T: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """c solving (H ⊙ UᵀU) c = diag(Uᵀ (W − τ ⊙ T) H), u_ij = a_{i,g(j)} b_ij."""
    R = W - tau[:, None] * T
    return _columns_solve(B, a, groups, H, R, R @ H)[0]


def objective(W: np.ndarray, H: np.ndarray, B: np.ndarray, a: np.ndarray, c: np.ndarray,
              groups: np.ndarray, T: np.ndarray, tau: np.ndarray) -> float:
    """g of Ŵ = (a_{i,g(j)} c_j) ⊙ B + τ ⊙ T."""
    W_hat = np.where(B, 1.0, -1.0) * a[:, groups] * c + tau[:, None] * T
    return trace_form(W - W_hat, H)


def refit_scales(W: np.ndarray, H: np.ndarray, B: np.ndarray, a: np.ndarray, c: np.ndarray,
                 groups: np.ndarray, T: np.ndarray, tau: np.ndarray,
                 rounds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """(a, c, τ, [g before, g after each round]): ``rounds`` of the row step then the column step.
    Each step is an exact minimiser, so g cannot rise; a round that would (rounding) is not kept
    and ends the refit. The products are shared: with W H and T H computed once, Ŵ H (for g
    before) and R H = W H − τ ⊙ T H (for the column step and g after it) need no more."""
    WH, TH = W @ H, T @ H
    history: list[float] = []
    for _ in range(rounds):
        signed = np.where(B, c, -c)
        parts = _group_products(signed, groups, H)
        if not history:
            W_hat = signed * a[:, groups] + tau[:, None] * T
            W_hat_H = tau[:, None] * TH
            for g, (_, zh) in enumerate(parts):
                W_hat_H += a[:, g:g + 1] * zh
            history.append(float(np.sum((WH - W_hat_H) * (W - W_hat))))
        x = _rows_solve(W, signed, parts, T, TH)
        a_new, tau_new = x[:, :-1], x[:, -1]
        c_new, f = _columns_solve(B, a_new, groups, H, W - tau_new[:, None] * T, WH - tau_new[:, None] * TH)
        if not f < history[-1]:
            break
        a, c, tau, history = a_new, c_new, tau_new, [*history, f]
    return a, c, tau, history
