"""The result object: compact S, packed signs, bits, objectives, reconstruction."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import slabopt
from slabopt import _backend as bk
from slabopt import pack_signs, unpack_signs


@given(m=st.integers(1, 7), n=st.integers(1, 30), seed=st.integers(0, 1000))
def test_pack_unpack_roundtrip(m, n, seed):
    B = np.where(np.random.default_rng(seed).random((m, n)) < 0.5, -1.0, 1.0)
    packed = pack_signs(B)
    assert packed.dtype == np.uint8 and packed.shape == (m, (n + 7) // 8)
    assert np.array_equal(packed, np.packbits(B > 0, axis=1))  # the documented layout
    assert np.array_equal(unpack_signs(packed, n), B)


@pytest.mark.parametrize("pattern", ["row", "global", "2:4", "4:8"])
def test_result_parts_are_consistent(pattern):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((16, 32))
    X = rng.standard_normal((50, 32))
    ratio = None if ":" in pattern else 0.5  # N:M fixes nnz(S) (more than half the bits here)
    res = slabopt.solve(W, X, ratio=ratio, rank=2, pattern=pattern)
    S = res.sparse.to_dense()
    assert res.sparse.nnz == res.budget.nnz
    assert np.count_nonzero(S) <= res.sparse.nnz
    if pattern == "row":
        assert np.all(np.diff(res.sparse.indptr) == res.budget.nnz_per_row)
    if ":" in pattern:
        n_, m_ = map(int, pattern.split(":"))
        counts = np.zeros((16, 32))
        counts[np.repeat(np.arange(16), np.diff(res.sparse.indptr)), res.sparse.indices] = 1
        assert np.all(counts.reshape(16, -1, m_).sum(-1) == n_)
    W_hat = S + (res.U @ res.V.T) * res.signs()
    assert np.allclose(res.reconstruct(), W_hat)
    assert res.bits == 16 * res.sparse.nnz + 16 * 2 * (16 + 32) + 16 * 32
    assert res.ratio == pytest.approx(1 - res.bits / (16 * 16 * 32))
    d = np.linalg.norm(X, axis=0)
    assert res.objective == pytest.approx(np.sum(((W - W_hat) * d) ** 2), rel=1e-9)
    H = X.T @ X
    H += 0.01 * np.mean(np.diag(H)) * np.eye(32)
    E = W - W_hat
    assert res.objective_full == pytest.approx(np.trace(E @ H @ E.T), rel=1e-9)
    objs = slabopt.objective(W, W_hat, X)
    assert objs.diagonal == pytest.approx(res.objective) and objs.full == pytest.approx(res.objective_full)
    assert res.objective_zero == pytest.approx(np.sum((W * d) ** 2))
    assert 0 < res.relative_error < 1
    assert res.n_iter == len(res.history) and res.wall_time > 0
    assert "SolveResult(method='alternating'" in repr(res)


@pytest.mark.parametrize("method", sorted(slabopt.methods()))
def test_packaging_in_row_blocks_equals_the_whole_matrix(monkeypatch, method):
    """S is compacted and the objectives summed in row blocks (here of 2 rows, the last of 1): the
    stored parts are those of one whole-matrix block, and the objectives are those of the dense
    Ŵ = ``reconstruct()``."""
    rng = np.random.default_rng(5)
    W = rng.standard_t(4, size=(13, 24))
    X = rng.standard_normal((60, 24))
    results = []
    for entries in (10**9, 48):
        monkeypatch.setattr(bk, "BLOCK_ENTRIES", entries)
        ratio = None if method in ("billm", "arb") else 0.5  # binarizers: fixed size, above 0.5 here
        results.append(slabopt.solve(W, X, ratio=ratio, rank=2, method=method, max_iter=3, tol=0))
    whole, blocks = results
    assert len(bk.row_blocks(13, 24)) == 7
    for name in ("indptr", "indices", "values"):
        np.testing.assert_array_equal(getattr(whole.sparse, name), getattr(blocks.sparse, name))
    np.testing.assert_array_equal(whole.reconstruct(), blocks.reconstruct())
    E = W - blocks.reconstruct()
    H = X.T @ X
    H += 0.01 * np.mean(np.diag(H)) * np.eye(24)
    for res in (whole, blocks):
        assert res.objective == pytest.approx(np.sum((E * np.linalg.norm(X, axis=0)) ** 2), rel=1e-10)
        assert res.objective_full == pytest.approx(np.trace(E @ H @ E.T), rel=1e-10)
        assert res.objective_zero == pytest.approx(np.sum((W * np.linalg.norm(X, axis=0)) ** 2), rel=1e-12)


def test_statistics_inputs_are_equivalent():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((12, 20))
    X = rng.standard_normal((40, 20))
    a = slabopt.solve(W, X, rank=2, svd="exact")
    b = slabopt.solve(W, col_norms=np.linalg.norm(X, axis=0), rank=2, svd="exact")
    c = slabopt.solve(W, gram=X.T @ X, rank=2, svd="exact")
    assert np.allclose(a.reconstruct(), b.reconstruct()) and np.allclose(a.reconstruct(), c.reconstruct())
    assert b.objective_full is None and c.objective_full == pytest.approx(a.objective_full)


def test_register_custom_method():
    from slabopt.problem import Decomposition

    @slabopt.register_method(
        "test_dense_copy", description="keeps everything", components=("sparse",), overwrite=True
    )
    def dense_copy(problem):
        xp = problem.xp
        return Decomposition(S=problem.W, mask=xp.ones(problem.shape, dtype=xp.bool), history=[0.0])

    assert "test_dense_copy" in slabopt.methods()
    W = np.arange(12.0).reshape(3, 4)
    res = slabopt.solve(W, method="test_dense_copy", ratio=0.1)
    assert np.array_equal(res.reconstruct(), W) and res.objective == 0
    with pytest.raises(ValueError, match="already registered"):
        slabopt.register_method("test_dense_copy", dense_copy, description="again")


def test_early_stopping_by_tol():
    rng = np.random.default_rng(5)
    res = slabopt.solve(rng.standard_normal((20, 30)), rank=2, tol=1e-2, max_iter=50)
    assert res.converged and res.n_iter < 50 and "tol" in res.message
    res = slabopt.solve(rng.standard_normal((20, 30)), rank=2, tol=0, max_iter=3)
    assert not res.converged and res.n_iter == 3


def test_progress_bar_and_callback(capsys):
    seen = []
    rng = np.random.default_rng(6)
    res = slabopt.solve(
        rng.standard_normal((10, 16)),
        rank=1,
        max_iter=4,
        tol=0,
        progress=True,
        callback=lambda it, f: seen.append((it, f)),
    )
    assert [it for it, _ in seen] == [1, 2, 3, 4]
    assert [f for _, f in seen] == res.history
    assert "alternating" in capsys.readouterr().err
