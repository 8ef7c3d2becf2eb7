"""The numba row kernel of the alternating solver against the reference NumPy loop.

The kernel must give the reference's iterates bit for bit: the same masks (exactly k per row, the
same tie rule), the same signs, factors and objective history; and it must actually run where it
applies, so that these comparisons test something.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slabopt
from slabopt.solvers import _alternating_kernels as _kernels
from slabopt.solvers import alternating as alt

from ._problems import heavy_tailed, spread_weights

numba = pytest.importorskip("numba")


def problem(seed, m, n, dtype, ties=False, dead=0):
    rng = np.random.default_rng(seed)
    W = heavy_tailed(rng, (m, n))
    if ties:  # coarse values: many equal scores, also at the threshold
        W = np.round(W * 2) / 2
    d = spread_weights(rng, n, dead=dead)
    if ties:
        d = np.round(d, 0) + 1
    return W.astype(dtype), d.astype(dtype)


def both(W, d, **kw):
    """(reference, kernel) results of the same solve."""
    return (slabopt.solve(W, col_norms=d, kernel="numpy", **kw),
            slabopt.solve(W, col_norms=d, kernel="auto", **kw))


def assert_identical(a, b):
    np.testing.assert_array_equal(a.sparse.indptr, b.sparse.indptr)
    np.testing.assert_array_equal(a.sparse.indices, b.sparse.indices)  # the same masks
    np.testing.assert_array_equal(a.sparse.values, b.sparse.values)
    np.testing.assert_array_equal(a.signs_packed, b.signs_packed)
    if a.U is None:
        assert b.U is None
    else:
        np.testing.assert_array_equal(a.U, b.U)
        np.testing.assert_array_equal(a.V, b.V)
    assert a.history == b.history
    assert a.objective == b.objective


@pytest.fixture
def spy(monkeypatch):
    """Counts the kernel's row passes (so a test knows the fast path ran)."""
    calls = []
    step = _kernels.RowKernel.step

    def counted(self, *args, **kw):
        calls.append(self.W.shape)
        return step(self, *args, **kw)

    monkeypatch.setattr(_kernels.RowKernel, "step", counted)
    return calls


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    m=st.integers(1, 40),
    n=st.integers(2, 70),
    rank=st.integers(1, 4),
    dtype=st.sampled_from([np.float32, np.float64]),
    ratio=st.sampled_from([0.3, 0.5, 0.7]),
    variant=st.sampled_from(["weighted", "paper"]),
    ties=st.booleans(),
    dead=st.integers(0, 2),
)
def test_kernel_iterates_equal_the_reference(seed, m, n, rank, dtype, ratio, variant, ties, dead):
    """Random shapes (odd n included), ranks 1-4, both dtypes and variants, ties and dead columns:
    masks, signs, factors, history and objective are bit-identical."""
    W, d = problem(seed, m, n, dtype, ties=ties, dead=min(dead, n - 1))
    rank = min(rank, m, n)
    try:
        budget = slabopt.budget((m, n), ratio, rank)
    except ValueError:
        return  # infeasible budget for this tiny shape
    kw = dict(ratio=ratio, rank=rank, max_iter=5, tol=0, variant=variant, svd="randomized")
    a, b = both(W, d, **kw)
    assert_identical(a, b)
    k = budget.nnz_per_row
    assert np.all(np.diff(b.sparse.indptr) == k)  # exactly k per row


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(64, 81), (33, 200), (120, 57)])
def test_kernel_matches_reference_and_is_taken(spy, shape, rank, dtype):
    W, d = problem(3, *shape, dtype)
    a, b = both(W, d, ratio=0.5, rank=rank, max_iter=8, tol=0)
    assert_identical(a, b)
    assert bool(spy) == (rank > 0)  # rank 0 is one sparse step, no loop to accelerate
    if rank:
        assert all(s == shape for s in spy)
        assert len(spy) == 8


def test_ties_at_the_threshold_follow_the_reference_rule(spy):
    """Rows whose k-th largest score is tied are decided by the reference's argpartition."""
    W = np.zeros((20, 31), dtype=np.float32)
    W[:, ::3] = 1.0  # 11 equal scores per row; k = 7 of them
    W[::2, 1] = -2.0
    d = np.ones(31, dtype=np.float32)
    for rank in (1, 2):
        a, b = both(W, d, ratio=0.75, rank=rank, max_iter=4, tol=0)
        assert_identical(a, b)
    assert spy


@pytest.mark.parametrize("pattern", ["global", "2:4", "4:8"])
def test_other_patterns_take_the_reference(spy, pattern):
    W, d = problem(5, 24, 48, np.float32)
    ratio = None if ":" in pattern else 0.5  # N:M fixes nnz(S) (more than half the bits here)
    a, b = both(W, d, ratio=ratio, rank=2, max_iter=4, tol=0, pattern=pattern)
    assert_identical(a, b)
    assert not spy
    with pytest.raises(ValueError, match="kernel='numba' cannot run here"):
        slabopt.solve(W, col_norms=d, ratio=ratio, rank=2, pattern=pattern, kernel="numba")


def test_descent_holds_on_the_kernel_path(spy):
    W, d = problem(7, 96, 160, np.float32)
    r = slabopt.solve(W, col_norms=d, ratio=0.5, rank=2, max_iter=15, tol=0, kernel="numba")
    assert spy
    assert all(b <= a * (1 + 1e-6) for a, b in zip(r.history, r.history[1:], strict=False))


def test_switched_off_or_missing_numba_runs_the_reference(monkeypatch, spy):
    W, d = problem(11, 30, 45, np.float32)
    b = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, max_iter=4, tol=0)
    assert spy
    spy.clear()
    monkeypatch.setenv(_kernels.ENV_SWITCH, "0")
    a = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, max_iter=4, tol=0)
    assert not spy
    assert_identical(a, b)
    with pytest.raises(ValueError, match="numba is not installed"):
        slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, kernel="numba")
    monkeypatch.delenv(_kernels.ENV_SWITCH)
    monkeypatch.setattr(_kernels, "njit", None)  # as if numba were not installed
    assert not _kernels.available()
    c = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, max_iter=4, tol=0)
    assert not spy
    assert_identical(c, b)


def test_torch_tensors_take_the_reference(spy):
    torch = pytest.importorskip("torch")
    W, d = problem(13, 24, 40, np.float32)
    a = slabopt.solve(torch.from_numpy(W), col_norms=torch.from_numpy(d), ratio=0.5, rank=1,
                      max_iter=4, tol=0)
    assert not spy
    b = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, max_iter=4, tol=0)
    assert spy
    np.testing.assert_array_equal(a.sparse.indices.numpy(), b.sparse.indices)
    assert a.objective == pytest.approx(b.objective, rel=1e-5)


def test_unknown_kernel_is_refused():
    W, d = problem(1, 8, 16, np.float32)
    with pytest.raises(ValueError, match="kernel"):
        slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, kernel="cuda")


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(2, 5000),
    frac=st.floats(0.0, 1.0),
    levels=st.sampled_from([0, 3, 50]),
    prev_rel=st.floats(0.0, 3.0),
    margin=st.sampled_from([1e-4, 1e-2, 0.5]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_row_threshold_is_the_exact_order_statistic(seed, n, frac, levels, prev_rel, margin, dtype):
    """Whatever the guess (a previous threshold near, far or absent), the answer is the k-th
    largest entry and the count of entries at or above it is right (ties included)."""
    rng = np.random.default_rng(seed)
    sc = rng.exponential(size=n) ** 2
    if levels:
        sc = np.round(sc * levels) / levels  # many ties
    sc = sc.astype(dtype)
    k = min(n - 1, max(1, int(frac * n)))
    true = np.partition(sc, n - k)[n - k]
    prev = -1.0 if prev_rel == 0.0 else float(true) * prev_rel
    buf = np.empty(n, dtype=dtype)
    flags = np.zeros(8 * ((n + 7) // 8), dtype=np.uint8)
    bounds = np.empty(2, dtype=dtype)
    t, count = _kernels.row_threshold(sc, k, prev, margin, buf, flags, bounds)
    assert t == true
    assert count == int(np.count_nonzero(sc >= true))


def test_row_threshold_on_long_rows_uses_the_sample_bracket():
    rng = np.random.default_rng(0)
    n = 20 * _kernels.SAMPLE
    sc = rng.standard_normal(n).astype(np.float32) ** 2
    buf, flags, bounds = np.empty(n, np.float32), np.zeros(n, np.uint8), np.empty(2, np.float32)
    for k in (1, 7, n // 3, n // 2, n - 1):
        t, count = _kernels.row_threshold(sc, k, -1.0, 1e-3, buf, flags, bounds)
        assert t == np.partition(sc, n - k)[n - k] and count == k


def test_use_kernel_rule():
    W, d = problem(2, 10, 20, np.float32)
    prob = alt.Problem(W=W, d=d / d.max(), d_scale=float(d.max()), budget=slabopt.budget(W.shape, 0.5, 1))
    assert alt.use_kernel(prob, "auto")
    assert not alt.use_kernel(prob, "numpy")
    assert not _kernels.applies(np.asfortranarray(W), "row", 3, 1)
    assert not _kernels.applies(W.astype(np.float16), "row", 3, 1)
    assert not _kernels.applies(W, "row", 0, 1) and not _kernels.applies(W, "row", 20, 1)
    assert not _kernels.applies(W, "row", 3, 0)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 576, 1001])
def test_numpy_sign_packing_equals_the_array_api_path(n):
    """pack_signs on NumPy (numpy.packbits) gives the bytes of the generic path (torch here)."""
    torch = pytest.importorskip("torch")
    from slabopt.signs import pack_signs, unpack_signs

    b = np.random.default_rng(n).standard_normal((5, n))
    b[0, 0], b[1, 0] = 0.0, -0.0  # sign(±0) = +1
    want = pack_signs(torch.from_numpy(b)).numpy()
    for form in (b, b >= 0, np.where(b >= 0, 1.0, -1.0).astype(np.float32)):
        got = pack_signs(form)
        assert got.dtype == np.uint8 and got.shape == (5, (n + 7) // 8)
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(unpack_signs(want, n, np.float64), np.where(b >= 0, 1.0, -1.0))
