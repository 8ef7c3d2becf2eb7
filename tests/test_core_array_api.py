"""The core solvers run inside any Array API namespace, checked with ``array_api_strict``, the
standard's reference library, which raises on every call outside the standard (methods such as
``.astype``, implicit int/bool-float promotion, integer-array assignment, flat indexing of 2-D
arrays, out-of-bounds slices, mixing devices, NumPy functions on its arrays).

Each core method must run on strict arrays without a NumPy round trip of a matrix, return strict
arrays on the input's device, and agree with the NumPy run within the tolerance of
``test_core_backends.py`` (relative 1e-5). The OBS-based methods compute in float64 NumPy by
design; for them only the result's namespace and device are checked.
"""

import contextlib

import numpy as np
import pytest

import slabopt
from slabopt import _backend as bk
from slabopt import signs
from slabopt.budget import budget
from slabopt.patterns import select_mask

xps = pytest.importorskip("array_api_strict")
pytest.importorskip("array_api_compat")  # how slabopt recognises namespaces beyond NumPy

rng = np.random.default_rng(0)
W = rng.standard_t(3, size=(24, 40))
X = rng.standard_normal((60, 40)) * 10 ** rng.uniform(0, 2, 40)
OTHER_DEVICE = xps.Device("device1")  # strict refuses to combine arrays of different devices

CORE = [  # (method, options): the solvers written against the array API
    ("alternating", dict(rank=2, kernel="numpy")),
    ("alternating", dict(rank=1, svd="randomized", pattern="2:4", ratio=None)),
    ("alternating", dict(rank=1, sparse_bits=4)),
    ("alternating", dict(rank=1, pattern="global", variant="paper")),
    ("admm", dict(rank=1, max_iter=3, init_iter=2)),
    ("svd", dict(rank=0, weighted=True)),
    ("magnitude", dict(rank=0, pattern="global")),
    ("wanda", dict(rank=0, pattern="2:4", ratio=None)),
    ("rpca", dict(rank=2, max_iter=30)),
    ("godec", dict(rank=2)),
    ("oats", dict(rank=2)),
    ("two_level", dict(rank=0)),
    ("slab_offset", dict(rank=1)),
    ("slab_init", dict(rank=2)),
]
CONVERTING = [  # float64 NumPy inside (documented), converted in and out
    ("gptq", dict(rank=0, ratio=None)),
    ("sparsegpt", dict(rank=0)),
    ("slab_obs", dict(rank=1)),
    ("rtn", dict(rank=0, ratio=None)),
]


def result_arrays(res):
    parts = dict(U=res.U, V=res.V, values=res.sparse.values, indices=res.sparse.indices,
                 indptr=res.sparse.indptr, signs_packed=res.signs_packed, levels=res.levels,
                 row_offset=res.row_offset, reconstruction=res.reconstruct(), signs=res.signs(),
                 low_rank=res.low_rank())
    if res.sparse_codes is not None:
        parts.update(codes=res.sparse_codes.codes, scales=res.sparse_codes.scales)
    return {k: v for k, v in parts.items() if v is not None}


def strict_solve(dtype, device=None, **kw):
    return slabopt.solve(xps.asarray(W.astype(dtype), device=device),
                         xps.asarray(X.astype(dtype), device=device), **kw)


def assert_strict_and_equal(res, ref, dtype, device):
    arrays = result_arrays(res)
    assert set(arrays) == set(result_arrays(ref))
    for name, a in arrays.items():
        assert bk.library_name(a) == "array_api_strict", name
        assert a.device == device, name
    assert res.reconstruct().dtype == getattr(xps, dtype.__name__)
    rec, rec_ref = bk.to_numpy(res.reconstruct()), ref.reconstruct()
    assert np.linalg.norm(rec - rec_ref) <= 1e-5 * np.linalg.norm(rec_ref)
    assert np.allclose(res.history, ref.history, rtol=1e-5)
    assert res.bits == ref.bits
    if ref.signs_packed is not None:
        assert np.array_equal(bk.to_numpy(res.signs_packed), ref.signs_packed)


@contextlib.contextmanager
def no_matrix_to_numpy(monkeypatch):
    """Inside the block, converting a matrix (both sides > 1) to NumPy fails; vectors may go (the
    objective values, float16-rounded row scales)."""
    plain = bk.to_numpy

    def guarded(x):
        if x.ndim >= 2 and min(x.shape) > 1:
            raise AssertionError(f"a {tuple(x.shape)} matrix was converted to NumPy inside the solve")
        return plain(x)

    with monkeypatch.context() as patch:
        patch.setattr(bk, "to_numpy", guarded)
        yield


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("method", "options"), CORE, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CORE)])
def test_core_methods_run_in_the_strict_namespace(method, options, dtype, monkeypatch):
    kw = {"ratio": 0.5, "max_iter": 4, "method": method, **options}
    ref = slabopt.solve(W.astype(dtype), X.astype(dtype), **kw)
    with no_matrix_to_numpy(monkeypatch):
        res = strict_solve(dtype, OTHER_DEVICE, **kw)
    assert_strict_and_equal(res, ref, dtype, OTHER_DEVICE)


@pytest.mark.parametrize(("method", "options"), CONVERTING)
def test_numpy_methods_return_the_input_namespace(method, options, monkeypatch):
    kw = {"ratio": 0.5, "max_iter": 4, "method": method, **options}
    ref = slabopt.solve(W, X, **kw)
    res = strict_solve(np.float64, OTHER_DEVICE, **kw)
    assert_strict_and_equal(res, ref, np.float64, OTHER_DEVICE)
    with no_matrix_to_numpy(monkeypatch), pytest.raises(AssertionError, match="converted to NumPy"):
        strict_solve(np.float64, **kw)  # the guard of the core test sees their conversion


def numpy_style_pm1_into(positive, out):
    """The sign write as NumPy allows it: a boolean matrix cast into a float one on assignment."""
    out[...] = positive
    out *= 2
    out -= 1
    return out


def numpy_partition_kth(scores, k, work=None):
    """The k-th largest entry by ``numpy.partition``, a NumPy function outside the standard."""
    n = scores.shape[-1]
    return np.partition(scores, n - k, axis=-1)[..., n - k : n - k + 1]


@pytest.mark.parametrize(("owner", "name", "plant", "refusal"), [
    (signs, "pm1_into", numpy_style_pm1_into, "cannot be type promoted"),
    (bk, "kth_largest", numpy_partition_kth, "Expected Array"),
])
def test_strict_namespace_catches_a_planted_non_standard_call(owner, name, plant, refusal, monkeypatch):
    monkeypatch.setattr(owner, name, plant)
    kw = dict(ratio=0.5, rank=1, max_iter=2, kernel="numpy")
    ref = slabopt.solve(W, X, **kw)  # NumPy runs the planted line...
    assert 0 < ref.relative_error < 1 and ref.n_iter == 2
    with pytest.raises(TypeError, match=refusal):  # ...the strict namespace refuses it
        strict_solve(np.float64, **kw)


@pytest.mark.parametrize(("pattern", "ratio", "group"), [("row", 0.5, 16), ("global", 0.6, 30 * 16),
                                                         ("2:4", None, 4)])
def test_standard_selection_with_ties_keeps_the_same_scores(pattern, ratio, group):
    """Scores in {0, 1, 2, 3}: most rows tie at their threshold, so the standard fallbacks (sort,
    argsort, the gathered scatter and row update) decide; the tie rule may differ from NumPy's, the
    multiset of kept scores of every selection group may not."""
    scores = np.random.default_rng(1).integers(0, 4, size=(30, 16)).astype(np.float64)
    bud = budget(scores.shape, ratio, 0, pattern=pattern)
    ref = select_mask(scores, bud)
    mask = select_mask(xps.asarray(scores, device=OTHER_DEVICE), bud)
    assert bk.library_name(mask) == "array_api_strict" and mask.device == OTHER_DEVICE

    def kept(m):
        return np.sort(np.where(m, scores, -1).reshape(-1, group), axis=1)

    np.testing.assert_array_equal(kept(bk.to_numpy(mask)), kept(ref))
    assert int(np.count_nonzero(bk.to_numpy(mask))) == bud.nnz


def test_standard_scatter_and_row_update_match_numpy():
    gen = np.random.default_rng(2)
    idx = gen.permutation(50)[:12]
    values = gen.standard_normal(12)
    ref = bk.scatter(np, 50, idx, values, 0.0)
    out = bk.scatter(xps, 50, xps.asarray(idx), xps.asarray(values), 0.0)
    np.testing.assert_array_equal(bk.to_numpy(out), ref)
    empty = bk.scatter(xps, 5, xps.asarray(idx[:0]), xps.asarray(values[:0]), 1.5)
    np.testing.assert_array_equal(bk.to_numpy(empty), np.full(5, 1.5))
    x, rows, new = gen.standard_normal((9, 4)), np.array([7, 2, 4]), gen.standard_normal((3, 4))
    ref = bk.put_rows(np, x.copy(), rows, new)
    out = bk.put_rows(xps, xps.asarray(x), xps.asarray(rows), xps.asarray(new))
    np.testing.assert_array_equal(bk.to_numpy(out), ref)
    assert not np.array_equal(ref, x)


def test_strict_arrays_move_to_numpy_and_back_on_their_device():
    a = xps.asarray(W, device=OTHER_DEVICE)
    assert bk.library_name(a) == "array_api_strict" and bk.device(a) == OTHER_DEVICE
    host = bk.to_numpy(a)
    assert isinstance(host, np.ndarray) and np.array_equal(host, W)
    back = bk.from_numpy(host * 2, like=a)
    assert bk.library_name(back) == "array_api_strict" and back.device == OTHER_DEVICE
    half = bk.round_to_precision(xps.asarray([0.1, 1 / 3]), "float16")  # strict has no float16
    np.testing.assert_array_equal(bk.to_numpy(half), np.array([0.1, 1 / 3]).astype(np.float16))
