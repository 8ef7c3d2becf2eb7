"""The beyond-the-paper variants slab_offset and slab_init."""

import numpy as np
import pytest

import slabopt


def layer(m=48, n=64, N=160, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, n)) * rng.uniform(0.2, 2.0, n)
    W = rng.standard_t(4, size=(m, n)) * 0.05 + rng.standard_normal((m, 1)) * 0.02
    return W, X


@pytest.mark.parametrize("method", ["slab_offset", "slab_init"])
def test_budget_monotone_and_reconstruct(method):
    W, X = layer()
    m, n = W.shape
    res = slabopt.solve(W, X, ratio=0.5, rank=2, method=method, tol=0, svd="exact")
    extra = 16 * m if method == "slab_offset" else 0
    assert res.bits == 16 * res.sparse.nnz + 16 * 2 * (m + n) + m * n + extra
    assert res.ratio >= 0.5
    h = np.array(res.history)
    assert np.all(np.diff(h) <= 1e-12 * h[0])
    ob = slabopt.objective(W, res.reconstruct(), X)
    assert ob.diagonal == pytest.approx(res.objective, rel=1e-9)


def test_zero_start_reproduces_alternating():
    W, X = layer()
    a = slabopt.solve(W, X, ratio=0.5, rank=2, method="alternating", svd="exact")
    b = slabopt.solve(W, X, ratio=0.5, rank=2, method="slab_init", init="zero", svd="exact")
    assert b.objective == pytest.approx(a.objective, rel=1e-3)  # same steps, own loop


def test_offset_absorbs_row_means():
    W, X = layer()
    res = slabopt.solve(W, X, ratio=0.5, rank=1, method="slab_offset")
    alt = slabopt.solve(W, X, ratio=0.5, rank=1, method="alternating")
    assert res.objective < alt.objective  # the planted row offsets cost L⊙B more than 1 value/row
