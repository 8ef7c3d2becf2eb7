"""SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", ICML 2023; github.com/IST-DASLab/sparsegpt, ``sparsegpt.py::fasterprune``).

Faithful port of ``fasterprune`` (its OBS loop is shared with ``gptq``, see ``_obs.py``):
H = XᵀX + 0.01·mean(diag)·I (the problem's damping), dead inputs (diag(XᵀX) = 0) zeroed,
Hinv = upper Cholesky factor of H⁻¹; columns processed in blocks of 128;
inside a block the mask is chosen by w²/[H⁻¹]_cc² (adaptive mask selection) and every pruned
weight's error is propagated to the remaining columns by the OBS update
W[:, c:] −= (w_c − q_c)/[Hinv]_cc · Hinv[c, c:]; after a block, its error is propagated lazily.

Budget: the original chooses the block mask over the whole block at a fixed sparsity; to meet our
exact budget the kept count of block [i1, i2) is ⌊k·i2/n⌋ − ⌊k·i1/n⌋ **per row** for the "row"
pattern (over the whole block for "global"); N:M uses the authors' per-group selection (keep the
N largest w²/[Hinv]_cc² of every M consecutive columns). Runs in float64 NumPy and converts back.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as bk
from .._validation import check_int
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..registry import register_method
from ._obs import dead_inputs, obs_sweep, sparsegpt_hessian, upper_cholesky_of_inverse


def _keep_top(scores: np.ndarray, counts: np.ndarray | int) -> np.ndarray:
    """Mask keeping ``counts`` (per row, or an int) largest entries of each row of ``scores``."""
    m, c = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(c)[None, :].repeat(m, 0), axis=1)
    counts = np.broadcast_to(np.asarray(counts).reshape(-1, 1), (m, 1))
    return ranks < counts


@register_method(
    "sparsegpt",
    description="S only: OBS pruning with Hessian updates, blocks of 128 (Frantar & Alistarh 2023)",
    components=("sparse",),
    needs_gram=True,
)
def sparsegpt(problem: Problem, *, blocksize: int = 128) -> Decomposition:
    """One-shot SparseGPT pruning of W to the budget (exact count per pattern)."""
    blocksize = check_int("blocksize", blocksize, 1)
    bud = problem.budget
    pat = bud.pattern
    if pat.kind == "nm" and blocksize % pat.m:
        blocksize = max(pat.m, blocksize // pat.m * pat.m)
    W = bk.to_numpy(problem.W).astype(np.float64, copy=True)
    m, n = W.shape
    dead = dead_inputs(problem)
    H = sparsegpt_hessian(problem, dead)
    W[:, dead] = 0.0
    Hinv = upper_cholesky_of_inverse(H)
    keep = np.zeros((m, n), dtype=bool)
    k = bud.nnz if pat.kind == "global" else (bud.nnz_per_row or 0)

    def start_block(i1: int, i2: int, W1: np.ndarray, Hinv1: np.ndarray) -> None:
        """Adaptive mask selection over the block (row and global patterns)."""
        if pat.kind == "nm":
            return
        tmp = W1**2 / np.diag(Hinv1)[None, :] ** 2
        kb = k * i2 // n - k * i1 // n
        if pat.kind == "row":
            keep[:, i1:i2] = _keep_top(tmp, kb)
        elif kb > 0:
            keep[:, i1:i2] = _keep_top(tmp.reshape(1, -1), kb).reshape(m, i2 - i1)

    def prune_column(c: int, i: int, W1: np.ndarray, Hinv1: np.ndarray) -> np.ndarray:
        if pat.kind == "nm" and i % pat.m == 0:  # N:M: the authors' per-group selection
            tmp = W1[:, i:i + pat.m] ** 2 / np.diag(Hinv1)[None, i:i + pat.m] ** 2
            keep[:, c:c + tmp.shape[1]] = _keep_top(tmp, pat.n)
        return np.where(keep[:, c], W1[:, i], 0.0)

    obs_sweep(W, Hinv, blocksize, prune_column, start_block)
    S = bk.from_numpy(W, like=problem.W)
    S = problem.xp.astype(S, problem.W.dtype)
    mask = bk.from_numpy(keep, like=problem.W)
    f = diagonal_objective(problem.W - S, problem.d)
    problem.report(1, f)
    return Decomposition(S=S, mask=mask, history=[f], message="one-shot SparseGPT pruning")
