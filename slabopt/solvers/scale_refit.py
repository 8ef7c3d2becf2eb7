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


def refit_rows(W: np.ndarray, H: np.ndarray, B: np.ndarray, c: np.ndarray, groups: np.ndarray,
               T: np.ndarray) -> np.ndarray:
    """x_i = (Z_i H Z_iᵀ)⁺ Z_i H w_i for every row: the m×(G+1) matrix [a | τ] (the least-norm
    solution where a row's system is singular, e.g. a row of S with no codes). Z_i's group rows are nonzero on
    their group's columns only, so Z H costs one m×n×n product in all."""
    signed = np.where(B, c, -c)
    count = int(groups.max()) + 1
    cols = [np.flatnonzero(groups == g) for g in range(count)]
    ZH = [signed[:, j] @ H[j, :] for j in cols] + [T @ H]
    Z_at = [(signed[:, j], j) for j in cols] + [(T, slice(None))]
    G = np.stack([np.stack([np.einsum("ij,ij->i", zh[:, j], z) for z, j in Z_at], axis=-1) for zh in ZH],
                 axis=1)
    rhs = np.stack([np.einsum("ij,ij->i", zh, W) for zh in ZH], axis=-1)
    return (np.linalg.pinv(G, rcond=1e-13, hermitian=True) @ rhs[..., None])[..., 0]


def refit_columns(W: np.ndarray, H: np.ndarray, B: np.ndarray, a: np.ndarray, groups: np.ndarray,
                  T: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """c solving (H ⊙ UᵀU) c = diag(Uᵀ (W − τ ⊙ T) H), u_ij = a_{i,g(j)} b_ij."""
    U = np.where(B, a[:, groups], -a[:, groups])
    R = W - tau[:, None] * T
    A = H * (U.T @ U)
    rhs = np.einsum("ij,ij->j", U, R @ H)
    try:
        return cho_solve(cho_factor(A), rhs)
    except np.linalg.LinAlgError:  # a column with u = 0 (all its a's are 0): least norm
        return np.linalg.lstsq(A, rhs, rcond=None)[0]


def objective(W: np.ndarray, H: np.ndarray, B: np.ndarray, a: np.ndarray, c: np.ndarray,
              groups: np.ndarray, T: np.ndarray, tau: np.ndarray) -> float:
    """g of Ŵ = (a_{i,g(j)} c_j) ⊙ B + τ ⊙ T."""
    W_hat = np.where(B, 1.0, -1.0) * a[:, groups] * c + tau[:, None] * T
    return trace_form(W - W_hat, H)


def refit_scales(W: np.ndarray, H: np.ndarray, B: np.ndarray, a: np.ndarray, c: np.ndarray,
                 groups: np.ndarray, T: np.ndarray, tau: np.ndarray,
                 rounds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """(a, c, τ, [g before, g after each round]): ``rounds`` of the row step then the column step,
    each kept only where it lowers g."""
    history = [objective(W, H, B, a, c, groups, T, tau)]
    for _ in range(rounds):
        x = refit_rows(W, H, B, c, groups, T)
        f = objective(W, H, B, x[:, :-1], c, groups, T, x[:, -1])
        if f < history[-1]:
            a, tau, history = x[:, :-1], x[:, -1], [*history, f]
        c_new = refit_columns(W, H, B, a, groups, T, tau)
        f = objective(W, H, B, a, c_new, groups, T, tau)
        if f < history[-1]:
            c, history = c_new, [*history, f]
        else:
            break
    return a, c, tau, history
