"""Truncated SVD for the low-rank step (docs/formulation.md §5.3, P3).

``truncated_svd(M, r)`` returns P (m×r), σ (r), Q (n×r) with P diag(σ) Qᵀ the best rank-r
approximation of M in Frobenius norm (Eckart–Young). With ``method="randomized"`` it is the
randomized range finder of Halko, Martinsson & Tropp (2011, Alg. 4.4 + 5.1): a Gaussian (or
warm-started) sketch, ``power_iters`` rounds of QR-stabilised subspace iteration, and an exact SVD
of the small projected matrix.
"""

from __future__ import annotations

from typing import Any

from . import _backend as bk

SVD_METHODS = ("auto", "exact", "randomized")
DEFAULT_DAMPING = 0.01


def damped_gram(gram: Any, damping: float = DEFAULT_DAMPING) -> Any:
    """H = G + λ·mean(diag G)·I for the undamped Gram matrix G = XᵀX."""
    xp = bk.namespace(gram)
    diag = xp.linalg.diagonal(gram)
    n = gram.shape[0]
    eye = xp.eye(n, dtype=gram.dtype, device=bk.device(gram))
    return gram + damping * xp.mean(diag) * eye


def outer(U: Any, V: Any) -> Any:
    """L = U Vᵀ (a broadcast product for rank 1, where GEMM is slow)."""
    xp = bk.namespace(U)
    if U.shape[1] == 1:
        return U * xp.reshape(V, (1, -1))
    return U @ xp.matrix_transpose(V)


def use_randomized(shape: tuple[int, int], rank: int, oversample: int) -> bool:
    """The "auto" rule: sketch when r + p is at most a quarter of min(m, n)."""
    return 4 * (rank + oversample) <= min(shape)


def truncated_svd(
    M: Any,
    rank: int,
    *,
    method: str = "auto",
    oversample: int = 10,
    power_iters: int = 4,
    seed: int = 0,
    start: Any = None,
) -> tuple[Any, Any, Any]:
    """Rank-``rank`` SVD of M: (P, σ, Q) with M ≈ P diag(σ) Qᵀ, σ descending.

    ``start`` (n×s) optionally warm-starts the sketch with a previous right subspace; its
    columns are completed by Gaussian columns up to r + p.
    """
    xp = bk.namespace(M)
    m, n = M.shape
    if method == "auto":
        method = "randomized" if use_randomized((m, n), rank, oversample) else "exact"
    if method == "exact":
        P, s, Qt = xp.linalg.svd(M, full_matrices=False)
        return P[:, :rank], s[:rank], xp.matrix_transpose(Qt[:rank, :])
    if method != "randomized":
        raise ValueError(f"unknown svd method {method!r}; known: {', '.join(SVD_METHODS)}")
    width = min(rank + oversample, m, n)
    have = 0 if start is None else min(start.shape[1], width)
    omega = bk.random_normal((n, width - have), seed, M, M.dtype)
    if have:
        omega = xp.concat([start[:, :have], omega], axis=1)
    Y, _ = xp.linalg.qr(M @ omega)
    Mt = xp.matrix_transpose(M)
    for _ in range(power_iters):
        Z, _ = xp.linalg.qr(Mt @ Y)
        Y, _ = xp.linalg.qr(M @ Z)
    small = xp.matrix_transpose(Y) @ M  # width × n
    Ps, s, Qt = xp.linalg.svd(small, full_matrices=False)
    return (Y @ Ps)[:, :rank], s[:rank], xp.matrix_transpose(Qt[:rank, :])
