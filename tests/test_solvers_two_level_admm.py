"""two_level and admm through slabopt.solve."""

import numpy as np
import pytest

import slabopt


def layer(m=48, n=64, N=160, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, n)) * rng.uniform(0.2, 2.0, n)
    X[:, :8] += 1.5 * rng.standard_normal((N, 1))
    X[:, 5] = 0.0  # a dead input
    W = rng.standard_t(4, size=(m, n)) * 0.05 + 0.02
    return W, X


def test_two_level_bits_monotone_and_levels():
    W, X = layer()
    m, n = W.shape
    res = slabopt.solve(W, X, ratio=0.5, method="two_level", tol=0)
    assert res.bits == 16 * res.sparse.nnz + 2 * 16 * m + m * n
    assert res.ratio >= 0.5
    h = np.array(res.history)
    assert np.all(np.diff(h) <= 1e-12 * h[0])
    low, high = res.levels
    assert np.all(low <= high)
    np.testing.assert_allclose(res.reconstruct(), slabopt.solve(
        W, X, ratio=0.5, method="two_level", tol=0).reconstruct())


def test_two_level_without_sparse_budget_is_the_quantiser():
    W, X = layer()
    m, n = W.shape
    ratio = 1 - (2 * 16 * m + m * n) / (16 * m * n) - 1e-9  # leaves no room for S
    res = slabopt.solve(W, X, ratio=ratio, method="two_level")
    assert res.sparse.nnz == 0
    d = np.linalg.norm(X, axis=0)
    low, high, is_high = slabopt.two_level_quantize(W, d**2)
    ref = np.where(is_high, high[:, None], low[:, None])
    assert res.objective == pytest.approx(np.sum(((W - ref) * d) ** 2), rel=1e-9)


def test_admm_not_worse_than_alternating_in_g_and_records_residuals():
    W, X = layer()
    alt = slabopt.solve(W, X, ratio=0.5, rank=2, method="alternating")
    res = slabopt.solve(W, X, ratio=0.5, rank=2, method="admm", max_iter=30)
    assert res.objective_full <= alt.objective_full * (1 + 1e-9)
    assert res.objective_full < 0.98 * alt.objective_full  # it actually improves g here
    assert len(res.info["primal"]) == len(res.info["dual"]) == len(res.info["rho"]) > 0
    assert res.info["g_start"] == pytest.approx(alt.objective_full, rel=1e-6)
    assert res.n_iter == len(res.history) == len(res.info["primal"]) <= 30
    assert res.sparse.nnz == res.budget.nnz and res.rank == 2 and res.ratio >= 0.5
    assert res.objective_full == pytest.approx(min(res.history), rel=1e-6)


def test_admm_without_gram_uses_diagonal_h():
    W, X = layer()
    d = np.linalg.norm(X, axis=0)
    res = slabopt.solve(W, col_norms=d, ratio=0.5, rank=2, method="admm", max_iter=5)
    assert res.objective_full is None and res.ratio >= 0.5
