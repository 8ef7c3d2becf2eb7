"""The values of S as q-bit codes with a scale per row (docs/formulation.md §2.4, §4.7, §5.6)."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import slabopt
from slabopt import budget, storage_bits
from slabopt.sparse_codes import SHRINKS, fit_row_scales, sparse_codes

from ._problems import heavy_tailed, spread_weights


def ratio_of(bits, b, m, n):
    return 1 - Fraction(bits, b * m * n)


# ----------------------------------------------------------------------------- the budget
def test_storage_bits_formula():
    m, n, nnz, r, q, b = 10, 24, 60, 2, 4, 16
    plain = storage_bits((m, n), nnz, r, b)
    coded = storage_bits((m, n), nnz, r, b, sparse_bits=q)
    assert plain - coded == (b - q) * nnz - b * m  # q-bit values, one b-bit scale per row
    assert storage_bits((m, n), 0, r, b, sparse_bits=q) == storage_bits((m, n), 0, r, b)  # no S: no scales


@settings(max_examples=150, deadline=None)
@given(m=st.integers(1, 120), n=st.integers(1, 200), ratio=st.floats(0.05, 0.95),
       rank=st.integers(0, 3), q=st.integers(2, 8), positions=st.sampled_from(["index", "bitmask"]))
def test_coded_budget_is_largest_feasible(m, n, ratio, rank, q, positions):
    rank = min(rank, m, n)
    try:
        bud = budget((m, n), ratio, rank, sparse_bits=q, positions=positions)
    except slabopt.InfeasibleBudgetError:
        return
    assert bud.sparse_bits == q and bud.nnz == m * bud.nnz_per_row
    assert ratio_of(bud.bits, 16, m, n) >= Fraction(ratio)
    if 0 < bud.nnz_per_row < n or (bud.nnz == 0 and positions == "index"):
        more = slabopt.Budget(**{**bud.__dict__, "nnz": bud.nnz + m, "nnz_per_row": bud.nnz_per_row + 1})
        assert ratio_of(more.bits, 16, m, n) < Fraction(ratio)


def test_coded_budget_keeps_more_values():
    plain = budget((64, 128), 0.5, 1)
    coded = budget((64, 128), 0.5, 1, sparse_bits=8)
    assert coded.nnz > 1.9 * plain.nnz


def test_coded_budget_nm_counts_scales():
    bud = budget((8, 16), None, 1, pattern="2:4", sparse_bits=4)
    assert bud.bits == storage_bits((8, 16), 64, 1, 16, 0, True, sparse_bits=4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(sparse_bits=1), "sparse_bits must be in \\[2, 8\\]"),
    (dict(sparse_bits=9), "sparse_bits must be in \\[2, 8\\]"),
    (dict(sparse_bits=4, pattern="global"), "equal count per row"),
    (dict(sparse_bits=4, components={"lowrank", "binary"}), "no sparse part"),
])
def test_coded_budget_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        budget((8, 16), 0.5, 1, **kwargs)


# ----------------------------------------------------------------------------- the row scales
def brute_force_errors(values, weights, q):
    """Weighted error of every grid scale, entry by entry in float64 (the oracle)."""
    out = np.empty((values.shape[0], len(SHRINKS)))
    for i, (v, w) in enumerate(zip(values, weights, strict=True)):
        amax = np.abs(v).max() or 1.0
        for g, p in enumerate(SHRINKS):
            s = float(np.float16(2 * p * amax / (2**q - 1)))
            err = 0.0
            for x, wx in zip(v, w, strict=True):
                c = min(max(np.round(x / s) + 2 ** (q - 1), 0), 2**q - 1)
                err += wx * (x - s * (c - 2 ** (q - 1))) ** 2
            out[i, g] = err
    return out


@pytest.mark.parametrize("q", [2, 3, 4, 8])
def test_row_scales_are_the_best_of_the_grid(q):
    rng = np.random.default_rng(q)
    values = heavy_tailed(rng, (12, 9))
    values[3] = 0.0  # a row of zeros
    weights = rng.uniform(0, 2, (12, 9))
    scales = fit_row_scales(values, weights, q)[:, 0]
    errors = brute_force_errors(values, weights, q)
    zero = 2 ** (q - 1)
    for i in range(12):
        codes = np.clip(np.round(values[i] / scales[i]) + zero, 0, 2**q - 1)
        got = np.sum(weights[i] * (values[i] - scales[i] * (codes - zero)) ** 2)
        assert got == pytest.approx(errors[i].min(), rel=1e-9, abs=1e-12)
        assert got <= errors[i, 0] * (1 + 1e-12)  # never worse than the min-max scale
    assert np.all(scales.astype(np.float16).astype(np.float64) == scales)  # stored exactly in float16


def test_codes_decode_to_the_values_they_store():
    rng = np.random.default_rng(1)
    values = heavy_tailed(rng, (7, 11))
    qm = sparse_codes(values, np.ones_like(values), 4)
    assert qm.codes.dtype == np.uint8 and int(qm.codes.max()) <= 15
    assert qm.symmetric and qm.group_size is None and qm.shape == (7, 11)
    assert np.max(np.abs(qm.dequantize() - values)) <= np.max(np.abs(values)) / 7  # within a step


# ----------------------------------------------------------------------------- solve
@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(5)
    W = heavy_tailed(rng, (48, 80)) * 0.02
    d = spread_weights(rng, 80, decades=1.5)
    return W, d


@pytest.mark.parametrize("q", [3, 4, 8])
@pytest.mark.parametrize("positions", ["index", "bitmask"])
def test_solve_with_coded_values(layer, q, positions):
    W, d = layer
    res = slabopt.solve(W, col_norms=d, ratio=0.6, rank=1, sparse_bits=q, positions=positions)
    codes = res.sparse_codes
    m, k = 48, res.budget.nnz_per_row
    assert codes.shape == (m, k) and codes.bits == q
    np.testing.assert_array_equal(res.sparse.values, codes.dequantize().reshape(-1))
    assert res.bits == res.budget.bits and res.ratio >= 0.6
    assert res.objective == pytest.approx(slabopt.objective(W, res.reconstruct(), col_norms=d).diagonal,
                                          rel=1e-10)
    assert res.settings["sparse_bits"] == q


def test_refit_never_raises_the_objective(layer):
    W, d = layer
    once = slabopt.solve(W, col_norms=d, ratio=0.6, rank=2, sparse_bits=3, sparse_refit=0)
    refit = slabopt.solve(W, col_norms=d, ratio=0.6, rank=2, sparse_bits=3, sparse_refit=3)
    steps = refit.info["sparse_refit"]
    assert steps[0] == pytest.approx(once.objective / float(d.max()) ** 2, rel=1e-9)
    assert refit.objective <= once.objective
    assert min(steps) * float(d.max()) ** 2 == pytest.approx(refit.objective, rel=1e-9)


def test_coded_values_beat_16_bit_values_at_equal_bits(layer):
    """The point of the option (measured, not a theorem): at ratio 0.5 8-bit codes keep about
    twice the entries and fit the layer better than 16-bit values."""
    W, d = layer
    plain = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, positions="bitmask")
    coded = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, positions="bitmask", sparse_bits=8)
    assert coded.bits <= plain.dense_bits // 2
    assert coded.objective < 0.5 * plain.objective


@pytest.mark.parametrize("method", ["wanda", "magnitude", "admm"])
def test_other_methods_take_coded_values(layer, method):
    W, d = layer
    X = np.random.default_rng(0).standard_normal((200, 80)) * d / 14
    res = slabopt.solve(W, X, ratio=0.6, rank=1, method=method, sparse_bits=4)
    assert res.sparse_codes is not None and res.bits == res.budget.bits
    np.testing.assert_array_equal(res.sparse.values, res.sparse_codes.dequantize().reshape(-1))


def test_nm_pattern_with_codes(layer):
    W, d = layer
    res = slabopt.solve(W, col_norms=d, ratio=None, rank=1, pattern="2:4", sparse_bits=4)
    assert res.sparse_codes.shape == (48, 40)
    assert res.bits == storage_bits((48, 80), 48 * 40, 1, 16, 0, True, sparse_bits=4)


def test_torch_matches_numpy(layer):
    W, d = layer
    a = slabopt.solve(W, col_norms=d, ratio=0.6, rank=1, sparse_bits=4, svd="exact")
    b = slabopt.solve(torch.from_numpy(W), col_norms=torch.from_numpy(d), ratio=0.6, rank=1,
                      sparse_bits=4, svd="exact")
    assert isinstance(b.sparse_codes.codes, torch.Tensor)
    np.testing.assert_array_equal(a.sparse_codes.codes, b.sparse_codes.codes.numpy())
    assert a.objective == pytest.approx(b.objective, rel=1e-9)


def test_bad_refit_is_one_clear_error(layer):
    W, d = layer
    with pytest.raises(ValueError, match="sparse_refit must be >= 0"):
        slabopt.solve(W, col_norms=d, ratio=0.6, rank=1, sparse_bits=4, sparse_refit=-1)


# ----------------------------------------------------------------------------- "auto"
@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 80), n=st.integers(8, 300), ratio=st.floats(0.3, 0.9), rank=st.integers(0, 2))
def test_auto_takes_round_a_plus_one(m, n, ratio, rank):
    """a = the bits per weight left for the values, computed here from the bits themselves."""
    rank = min(rank, m, n)
    try:
        auto = budget((m, n), ratio, rank, sparse_bits="auto", positions="bitmask")
    except slabopt.InfeasibleBudgetError:
        return
    empty = budget((m, n), ratio, rank, sparse_bits=8, positions="bitmask")
    empty = slabopt.Budget(**{**empty.__dict__, "nnz": 0, "nnz_per_row": 0})
    left = (1 - Fraction(ratio)) * 16 * m * n - empty.bits - 16 * m - m * n  # minus scales and mask
    a = max(Fraction(0), left) / (m * n)
    full = budget((m, n), ratio, rank, sparse_bits=8, positions="bitmask").density == 1
    a8 = 8 if full else 8 * budget((m, n), ratio, rank, sparse_bits=8, positions="bitmask").density
    assert abs(a8 - float(a)) <= 8 / n + 1e-9 or full  # the per-row rounding of k at q = 8
    assert auto.sparse_bits == min(8, max(2, round(a8) + 1))
    assert auto == budget((m, n), ratio, rank, sparse_bits=auto.sparse_bits, positions="bitmask")


def test_auto_examples():
    """SmolLM2's 576×576 layers, rank 1: 8 bits per weight on disk → q = 7, 6 → 5, 5 → 4, 4 → 3."""
    got = [budget((576, 576), 1 - b / 16, 1, sparse_bits="auto", positions="bitmask").sparse_bits
           for b in (8, 6, 5, 4)]
    assert got == [7, 5, 4, 3]


def test_auto_with_nm_takes_the_largest_q_that_fits():
    bud = budget((64, 128), 0.7, 1, pattern="2:4", sparse_bits="auto", positions="bitmask")
    assert bud.sparse_bits < 8 and bud.bits <= 0.3 * 16 * 64 * 128
    bigger = budget((64, 128), 0.7, 1, pattern="2:4", sparse_bits=bud.sparse_bits + 1, positions="bitmask")
    assert bigger.bits > 0.3 * 16 * 64 * 128


def test_auto_in_solve_records_the_q_used(layer):
    W, d = layer
    res = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, sparse_bits="auto", positions="bitmask")
    assert res.settings["sparse_bits"] == "auto"
    assert res.settings["sparse_bits_used"] == res.sparse_codes.bits == res.budget.sparse_bits
    with pytest.raises(ValueError, match='"auto" or None'):
        slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, sparse_bits="eight")
