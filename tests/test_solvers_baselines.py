"""Baselines through slabopt.solve: budgets, fidelity to their published algorithms, optimality."""

import numpy as np
import pytest

import slabopt
from slabopt.solvers.rpca import pcp_ialm

ALL = ["alternating", "magnitude", "wanda", "sparsegpt", "svd", "oats", "godec", "rpca",
       "two_level", "admm"]


def layer(m=48, n=64, N=160, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, n)) * rng.uniform(0.2, 2.0, n)
    X[:, :8] += 1.5 * rng.standard_normal((N, 1))  # correlated inputs: H is not diagonal
    W = rng.standard_t(4, size=(m, n)) * 0.05
    return W, X


def f_of(W, W_hat, X):
    return slabopt.objective(W, W_hat, X)


def test_methods_listed():
    listed = slabopt.methods()
    for name in ALL:
        assert listed.get(name)


@pytest.mark.parametrize("method", [m for m in ALL if m != "rpca"])
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_budget_met_and_objective_consistent(method, ratio):
    W, X = layer()
    res = slabopt.solve(W, X, ratio=ratio, rank=0 if method == "svd" else 2, method=method)
    assert res.ratio >= ratio - 1e-12
    assert res.bits <= res.budget.bits or method == "svd"
    ob = f_of(W, res.reconstruct(), X)
    assert ob.diagonal == pytest.approx(res.objective, rel=1e-9)
    assert ob.full == pytest.approx(res.objective_full, rel=1e-9)


def test_wanda_is_the_exact_sparse_only_optimum_and_magnitude_without_x():
    W, X = layer()
    res = slabopt.solve(W, X, ratio=0.5, method="wanda")
    ref = slabopt.solve(W, X, ratio=0.5, rank=0, method="alternating")
    assert res.objective == pytest.approx(ref.objective, rel=1e-12)
    d = np.linalg.norm(X, axis=0)
    k = res.budget.nnz_per_row
    keep = np.argsort(-np.abs(W) * d, axis=1)[:, :k]
    mask = np.zeros_like(W, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=1)
    np.testing.assert_array_equal(res.sparse.to_dense() != 0, mask)
    a = slabopt.solve(W, None, ratio=0.5, method="wanda").reconstruct()
    b = slabopt.solve(W, None, ratio=0.5, method="magnitude").reconstruct()
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("pattern", ["row", "global", "2:4"])
def test_sparsegpt_matches_naive_obs_updates(pattern):
    """Values = the OBS updates with inv(H[F, F]) over the shrinking unfrozen set F (paper §3)."""
    W, X = layer(m=12, n=40, N=120)
    res = slabopt.solve(W, X, ratio=None if pattern == "2:4" else 0.5, method="sparsegpt",
                        pattern=pattern, blocksize=16)
    S = res.sparse.to_dense()
    mask = np.zeros(W.shape, dtype=bool)
    for i in range(W.shape[0]):
        cols = res.sparse.indices[res.sparse.indptr[i]:res.sparse.indptr[i + 1]]
        mask[i, cols] = True
    assert mask.sum() == res.budget.nnz
    if pattern == "2:4":
        assert (mask.reshape(12, -1, 4).sum(-1) == 2).all()
    G = X.T @ X
    H = G + 0.01 * np.mean(np.diag(G)) * np.eye(40)
    w = W.copy()
    for c in range(40):
        Hi = np.linalg.inv(H[c:, c:])
        q = np.where(mask[:, c], w[:, c], 0.0)
        w[:, c:] -= np.outer((w[:, c] - q) / Hi[0, 0], Hi[0, :])
        w[:, c] = q
    np.testing.assert_allclose(S, w, rtol=1e-8, atol=1e-10)


def test_sparsegpt_lowers_g_against_wanda_on_a_correlated_layer():
    W, X = layer(m=64, n=256, N=512)
    a = slabopt.solve(W, X, ratio=0.5, method="sparsegpt")
    b = slabopt.solve(W, X, ratio=0.5, method="wanda")
    assert a.objective_full < b.objective_full  # the point of the Hessian updates


def test_svd_uses_the_largest_feasible_rank_and_eckart_young():
    W, _ = layer()
    m, n = W.shape
    res = slabopt.solve(W, None, ratio=0.6, rank=0, method="svd")
    r = res.rank
    assert 16 * r * (m + n) <= 0.4 * 16 * m * n < 16 * (r + 1) * (m + n)
    s = np.linalg.svd(W, compute_uv=False)
    assert res.objective == pytest.approx(np.sum(s[r:] ** 2), rel=1e-9)
    _, X = layer()
    a = slabopt.solve(W, X, ratio=0.6, rank=0, method="svd")
    b = slabopt.solve(W, X, ratio=0.6, rank=0, method="svd", weighted=True)
    assert b.objective <= a.objective


def test_oats_monotone_and_not_beaten_by_exact_godec_reference():
    """Fixed-budget exact-SVD GoDec written here must not beat oats with D = I at equal (r, k)."""
    rng = np.random.default_rng(3)
    M = rng.standard_normal((40, 30)) @ rng.standard_normal((30, 50)) * 0.1
    M += np.where(rng.random(M.shape) < 0.05, rng.standard_normal(M.shape) * 5, 0)
    r, ratio = 3, 0.6
    res = slabopt.solve(M, None, ratio=ratio, rank=r, method="oats", svd="exact",
                        max_iter=100, tol=0)
    h = np.array(res.history)
    assert np.all(np.diff(h) <= 1e-12 * h[0])
    k = res.budget.nnz_per_row
    S = np.zeros_like(M)
    for _ in range(100):
        P, s, Qt = np.linalg.svd(M - S, full_matrices=False)
        L = (P[:, :r] * s[:r]) @ Qt[:r]
        R = M - L
        idx = np.argsort(-np.abs(R), axis=1)[:, :k]
        S = np.zeros_like(M)
        np.put_along_axis(S, idx, np.take_along_axis(R, idx, 1), 1)
    ref = np.sum((M - L - S) ** 2)
    assert res.objective <= ref * (1 + 1e-9)
    assert res.objective == pytest.approx(ref, rel=1e-6)


def test_godec_beats_its_start_and_stops():
    W, X = layer()
    res = slabopt.solve(W, X, ratio=0.5, rank=4, method="godec")
    assert res.history[-1] <= res.history[0]
    assert res.rank == 4 and res.sparse.nnz == res.budget.nnz
    # GoDec's first iterate is L = P_r(M), S = top-k(M − L): wanda-like at worst, never worse
    # than keeping L = 0 by more than the rank-r part could add
    assert res.relative_error < 1


def test_rpca_agrees_with_pyrpca():
    pyrpca = pytest.importorskip("pyrpca")
    rng = np.random.default_rng(0)
    for m, n, r in [(60, 50, 3), (40, 70, 2)]:
        L0 = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
        S0 = np.where(rng.random((m, n)) < 0.05, rng.uniform(-10, 10, (m, n)), 0)
        M = L0 + S0
        lam = 1 / np.sqrt(max(m, n))
        for tol, close in [(1e-7, 1e-6), (1e-11, 1e-9)]:  # the authors' tol, then a tight one
            Lp, Sp = pyrpca.rpca_pcp_ialm(M, lam, tol=tol, verbose=False)
            res = slabopt.solve(M, None, ratio=0.1, rank=r, method="rpca", tol_alm=tol)
            assert np.linalg.norm(res.low_rank() - Lp) <= close * np.linalg.norm(Lp)
            assert np.linalg.norm(res.sparse.to_dense() - Sp) <= close * np.linalg.norm(Sp)


def test_rpca_recovers_and_reports_budget_projection():
    rng = np.random.default_rng(1)
    m, n, r = 80, 60, 2
    L0 = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    S0 = np.where(rng.random((m, n)) < 0.05, rng.uniform(-10, 10, (m, n)), 0)
    P, s, Q, E, _, errs = pcp_ialm(L0 + S0)
    assert np.abs((P * s) @ Q.T - L0).max() < 1e-5 and np.abs(E - S0).max() < 1e-5
    assert errs[-1] < 1e-7 and len(s) == r
    res = slabopt.solve(L0 + S0, None, ratio=0.85, rank=r, method="rpca")
    assert res.bits == res.info["reached_bits"]
    proj = slabopt.solve(L0 + S0, None, ratio=0.85, rank=r, method="rpca", project=True)
    assert proj.ratio >= 0.85 and proj.rank == r
    assert proj.objective == pytest.approx(res.info["projected_objective"], rel=1e-9)


def test_torch_backend_agrees():
    torch = pytest.importorskip("torch")
    W, X = layer()
    for method, kw in [("wanda", {}), ("oats", {"svd": "exact"}), ("godec", {}),
                       ("two_level", {}), ("sparsegpt", {}), ("svd", {"rank": 0})]:
        kw = {"rank": 2, **kw}
        a = slabopt.solve(W, X, ratio=0.5, method=method, **kw)
        b = slabopt.solve(torch.from_numpy(W), torch.from_numpy(X), ratio=0.5, method=method, **kw)
        assert b.objective == pytest.approx(a.objective, rel=1e-6), method
