"""two_level_quantize: exact against brute force (Lemma 1), degenerate cases, backends."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import slabopt
from slabopt.level_quantizer import two_level_cost, two_level_quantize


def brute_force(w, om):
    """Minimum over every assignment to two groups of the weighted within-group cost."""
    n = len(w)
    if om.sum() == 0:
        om = np.ones_like(om)
    best = np.inf
    for bits in itertools.product([0, 1], repeat=n):
        g = np.array(bits, dtype=bool)
        cost = 0.0
        for grp in (g, ~g):
            tw = om[grp].sum()
            if tw > 0:
                mean = (om[grp] * w[grp]).sum() / tw
                cost += (om[grp] * (w[grp] - mean) ** 2).sum()
        best = min(best, cost)
    return best


values = st.floats(-5, 5, allow_nan=False, width=64).map(lambda x: round(x, 2))


@given(
    data=st.lists(st.tuples(values, st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0, 3.7])), min_size=1,
                  max_size=8),
    weighted=st.booleans(),
)
def test_matches_brute_force(data, weighted):
    w = np.array([a for a, _ in data])
    om = np.array([b for _, b in data]) if weighted else np.ones(len(w))
    low, high, is_high = two_level_quantize(w, om if weighted else None)
    assert low <= high
    got = two_level_cost(w, low, high, om)
    ref = brute_force(w, om)
    assert got <= ref + 1e-9 * (1 + abs(ref))
    # is_high is the nearest-level assignment, so the assignment cost equals the min cost
    code = np.where(is_high, high, low)
    assert np.isclose((om * (w - code) ** 2).sum(), got, rtol=1e-9, atol=1e-12)


def test_rows_vectorised_equal_one_by_one():
    rng = np.random.default_rng(0)
    W = rng.standard_t(3, size=(50, 33))
    om = rng.uniform(0, 2, size=33) ** 2
    low, high, is_high = two_level_quantize(W, om)
    assert low.shape == high.shape == (50,) and is_high.shape == W.shape
    for i in range(50):
        lo, hi, ih = two_level_quantize(W[i], om)
        assert lo == pytest.approx(low[i]) and hi == pytest.approx(high[i])
        np.testing.assert_array_equal(ih, is_high[i])


def test_degenerate_cases():
    lo, hi, ih = two_level_quantize(np.array([3.0]))
    assert lo == hi == 3.0 and not ih.any()
    lo, hi, ih = two_level_quantize(np.full(5, -2.0))
    assert lo == hi == -2.0 and not ih.any()
    # a single positive weight: both levels at that entry, cost 0
    lo, hi, _ = two_level_quantize(np.array([1.0, 5.0, 9.0]), np.array([0.0, 1.0, 0.0]))
    assert lo == hi == 5.0
    # all-zero weights: unit weights are used
    a = two_level_quantize(np.array([0.0, 1.0, 10.0]), np.zeros(3))
    b = two_level_quantize(np.array([0.0, 1.0, 10.0]))
    assert a[0] == b[0] and a[1] == b[1]
    assert b[0] == 0.5 and b[1] == 10.0
    # ties and two-valued rows are coded exactly
    lo, hi, ih = two_level_quantize(np.array([1.0, 4.0, 1.0, 4.0, 4.0]))
    assert (lo, hi) == (1.0, 4.0)
    np.testing.assert_array_equal(ih, [False, True, False, True, True])


def test_errors_and_export():
    assert slabopt.two_level_quantize is two_level_quantize
    with pytest.raises(ValueError):
        two_level_quantize(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        two_level_quantize(np.ones(3), -np.ones(3))


def test_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    W = rng.standard_normal((20, 17))
    om = rng.uniform(0, 1, 17)
    ref = two_level_quantize(W, om)
    got = two_level_quantize(torch.from_numpy(W), torch.from_numpy(om))
    np.testing.assert_allclose(got[0].numpy(), ref[0], rtol=1e-12)
    np.testing.assert_allclose(got[1].numpy(), ref[1], rtol=1e-12)
    np.testing.assert_array_equal(got[2].numpy(), ref[2])
