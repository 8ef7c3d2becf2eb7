"""The optimal-brain-surgeon machinery shared by SparseGPT and GPTQ (not part of the public API).

Both methods of Frantar & Alistarh (IST-DASLab ``sparsegpt.py::fasterprune``,
``gptq.py::fasterquant``) run the same loop and differ only in how a column is rounded (pruned or
quantised):

* the Hessian H = XᵀX + λ·mean(diag)·I with the dead inputs (diag(XᵀX) = 0) given H_jj = 1 and
  W[:, j] = 0 (:func:`dead_inputs`, :func:`sparsegpt_hessian`, :func:`gptq_hessian`);
* Hinv, the upper Cholesky factor of H⁻¹ (:func:`upper_cholesky_of_inverse`);
* the columns in blocks, each column rounded to q and its error fed forward to the rest of its block
  by W1[:, c:] −= (w_c − q_c)/Hinv_cc · Hinv[c, c:], and each block's errors fed lazily to the
  columns after it (:func:`obs_sweep`).

Everything is float64 NumPy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg import lapack

from .. import _backend as bk
from ..problem import Problem
from ._util import hessian_or_diag


def input_diagonal(problem: Problem) -> np.ndarray:
    """diag(XᵀX) in the problem's units (d² when only d is known), float64."""
    raw = problem.gram
    diag = bk.to_numpy(raw).diagonal() if raw is not None else bk.to_numpy(problem.d) ** 2
    return diag.astype(np.float64)


def dead_inputs(problem: Problem) -> np.ndarray:
    """Inputs that are always zero, diag(XᵀX) = 0 (boolean, n)."""
    return input_diagonal(problem) == 0


def sparsegpt_hessian(problem: Problem, dead: np.ndarray) -> np.ndarray:
    """H for ``sparsegpt``: the problem's damped H (damping from the mean of the undamped
    diagonal, dead inputs included as 0), then H_jj = 1 at dead inputs. This is the order slabopt's
    sparsegpt has always used; the authors set H_jj = 1 first and damp afterwards
    (:func:`gptq_hessian`). Without dead inputs both are the same."""
    H = bk.to_numpy(hessian_or_diag(problem)).astype(np.float64, copy=True)
    H[dead, dead] = 1.0
    return H


def gptq_hessian(problem: Problem, dead: np.ndarray, perm: np.ndarray | None = None) -> np.ndarray:
    """H for ``gptq``, in the authors' order: undamped XᵀX (diag(d²) when only d is known),
    H_jj = 1 at dead inputs, rows and columns permuted by ``perm`` (``act_order``), then
    λ·mean(diag H) added to the diagonal (``percdamp`` = the problem's damping)."""
    G = problem.gram
    if G is None:
        H = np.diag(bk.to_numpy(problem.d).astype(np.float64) ** 2)
    else:
        H = bk.to_numpy(G).astype(np.float64, copy=True)
    H[dead, dead] = 1.0
    if perm is not None:
        H = H[perm][:, perm]
    damp = problem.damping * np.mean(np.diag(H))
    diag = np.arange(H.shape[0])
    H[diag, diag] += damp
    return H


def upper_cholesky_of_inverse(H: np.ndarray, *, via_cholesky: bool = False) -> np.ndarray:
    """Hinv = the upper Cholesky factor of H⁻¹ (Hinvᵀ Hinv = H⁻¹).

    H⁻¹ comes from ``inv`` (``sparsegpt``, unchanged since its first version) or, with
    ``via_cholesky``, from H's Cholesky factor as the GPTQ authors compute it (``cholesky`` then
    ``cholesky_inverse``, LAPACK potrf/potri): the same matrix up to rounding, in about half the
    operations."""
    if not via_cholesky:
        return np.linalg.cholesky(np.linalg.inv(H)).T
    L = np.linalg.cholesky(H)
    inv, info = lapack.dpotri(L, lower=1)
    if info != 0:  # pragma: no cover - L comes from a successful Cholesky factorisation
        raise np.linalg.LinAlgError(f"potri failed (info = {info})")
    inv = np.tril(inv) + np.tril(inv, -1).T
    return np.linalg.cholesky(inv).T


ColumnRule = Callable[[int, int, np.ndarray, np.ndarray], np.ndarray]
BlockStart = Callable[[int, int, np.ndarray, np.ndarray], None]


def obs_sweep(W: np.ndarray, Hinv: np.ndarray, blocksize: int, round_column: ColumnRule,
              start_block: BlockStart | None = None) -> None:
    """Round every column of ``W`` in place, feeding each rounding error forward (OBS update).

    Columns are taken in blocks ``[i1, i2)`` of ``blocksize``. ``start_block(i1, i2, W1, Hinv1)``
    is called first for each block, with ``W1`` the block's working copy and ``Hinv1`` its diagonal
    block of Hinv. Then for each column ``c = i1 + i``, ``round_column(c, i, W1, Hinv1)`` returns
    its rounded value q (a new array; ``W1[:, i]`` is the column after the updates so far, ``W``
    itself holds the columns of this block as they were when the block started), and the error
    ``(W1[:, i] − q) / Hinv1[i, i]`` updates the block's later columns. At the end of a block its
    rounded columns are written to ``W`` and its errors applied to ``W[:, i2:]``.
    """
    n = W.shape[1]
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if start_block is not None:
            start_block(i1, i2, W1, Hinv1)
        for i in range(count):
            w = W1[:, i]
            dd = Hinv1[i, i]
            q = round_column(i1 + i, i, W1, Hinv1)
            Q1[:, i] = q
            err1 = (w - q) / dd
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
