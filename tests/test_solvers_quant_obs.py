"""sparsegpt is bit-identical to its version before its OBS loop was shared with gptq.

``_sparsegpt_before`` is slabopt's ``sparsegpt`` at commit 5907cbf, verbatim (registered under a
test name), the oracle for the refactored one (slabopt/solvers/_obs.py).
"""

import numpy as np
import pytest

import slabopt
from slabopt import _backend as bk
from slabopt.objective import diagonal_objective
from slabopt.problem import Decomposition


def layer(seed, m=40, n=200, N=300, dead=()):
    """Heavy-tailed weights, correlated inputs with spread column scales, optional dead inputs."""
    rng = np.random.default_rng(seed)
    W = rng.standard_t(2.5, size=(m, n)) * 0.05
    X = (rng.standard_normal((N, n)) @ (np.eye(n) + rng.standard_normal((n, n)) * (0.6 / np.sqrt(n)))
         ) * np.exp(rng.normal(0, 0.7, n))
    X[:, list(dead)] = 0
    return W, X


def _keep_top(scores, counts):
    m, c = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(c)[None, :].repeat(m, 0), axis=1)
    counts = np.broadcast_to(np.asarray(counts).reshape(-1, 1), (m, 1))
    return ranks < counts


def _sparsegpt_before(problem, *, blocksize=128):
    from slabopt.solvers._util import hessian_or_diag

    bud = problem.budget
    pat = bud.pattern
    if pat.kind == "nm" and blocksize % pat.m:
        blocksize = max(pat.m, blocksize // pat.m * pat.m)
    W = bk.to_numpy(problem.W).astype(np.float64, copy=True)
    H = bk.to_numpy(hessian_or_diag(problem)).astype(np.float64, copy=True)
    m, n = W.shape
    raw = problem.gram
    raw_diag = (bk.to_numpy(raw).diagonal() if raw is not None
                else bk.to_numpy(problem.d) ** 2).astype(np.float64)
    dead = raw_diag == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H⁻¹
    keep = np.zeros((m, n), dtype=bool)
    k = bud.nnz if pat.kind == "global" else (bud.nnz_per_row or 0)
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        count = i2 - i1
        W1 = W[:, i1:i2].copy()
        Q1 = np.zeros_like(W1)
        Err1 = np.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        dH = np.diag(Hinv1)
        keep1 = np.zeros((m, count), dtype=bool)
        if pat.kind != "nm":
            tmp = W1**2 / dH[None, :] ** 2
            kb = k * i2 // n - k * i1 // n
            if pat.kind == "row":
                keep1 = _keep_top(tmp, kb)
            elif kb > 0:
                flat = _keep_top(tmp.reshape(1, -1), kb)
                keep1 = flat.reshape(m, count)
        for i in range(count):
            w = W1[:, i]
            dd = Hinv1[i, i]
            if pat.kind == "nm" and i % pat.m == 0:
                tmp = W1[:, i:i + pat.m] ** 2 / dH[None, i:i + pat.m] ** 2
                keep1[:, i:i + pat.m] = _keep_top(tmp, pat.n)
            q = np.where(keep1[:, i], w, 0.0)
            Q1[:, i] = q
            err1 = (w - q) / dd
            W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        keep[:, i1:i2] = keep1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    S = bk.from_numpy(W, like=problem.W)
    S = problem.xp.astype(S, problem.W.dtype)
    mask = bk.from_numpy(keep, like=problem.W)
    f = diagonal_objective(problem.W - S, problem.d)
    problem.report(1, f)
    return Decomposition(S=S, mask=mask, history=[f], message="one-shot SparseGPT pruning")



@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pattern", ["row", "global", "2:4", "4:8"])
@pytest.mark.parametrize("acts", ["X", "X_dead", "col_norms", "gram"])
def test_sparsegpt_is_bit_identical_to_before_the_shared_loop(dtype, pattern, acts):
    W, X = layer(seed=21, dead=(3, 77) if acts == "X_dead" else ())
    W, X = W.astype(dtype), X.astype(dtype)
    slabopt.register_method("test_sparsegpt_before", _sparsegpt_before, description="sparsegpt before",
                            components=("sparse",), needs_gram=True, overwrite=True)
    kw = {"col_norms": np.linalg.norm(X, axis=0)} if acts == "col_norms" else (
        {"gram": X.T @ X} if acts == "gram" else {"X": X})
    for blocksize in (64, 128):
        new = slabopt.solve(W, ratio=0.45, method="sparsegpt", pattern=pattern, blocksize=blocksize, **kw)
        old = slabopt.solve(W, ratio=0.45, method="test_sparsegpt_before", pattern=pattern,
                            blocksize=blocksize, **kw)
        np.testing.assert_array_equal(new.reconstruct(), old.reconstruct())
        np.testing.assert_array_equal(new.sparse.indices, old.sparse.indices)
        assert new.objective == old.objective and new.objective_full == old.objective_full
