"""Rice codes of the positions of S (docs/formulation.md §4.8): round trip, exact bit counts, the
bound the budget charges, and bits stored == bits counted through ``solve``."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slabopt
from slabopt.budget import rice_count
from slabopt.positions import (
    coded_count,
    rice_bits,
    rice_bound,
    rice_bounds,
    rice_decode,
    rice_encode,
    rice_parameter,
)


def _csr(mask):
    return np.r_[0, np.cumsum(mask.sum(1))], np.nonzero(mask)[1]


def _bruteforce_length(cols, n):
    """Bits of one row's code by the definition, with a plain loop and p searched over all values."""
    k = len(cols)
    coded = cols if k <= n - k else [j for j in range(n) if j not in set(cols)]
    if not coded:
        return 0
    best = min(range(n.bit_length() + 1), key=lambda p: (len(coded) * (p + 1) + ((n - len(coded)) >> p), p))
    prev, total = -1, 0
    for c in coded:
        g = c - prev - 1
        total += (g >> best) + 1 + best
        prev = c
    return total


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 70), st.data())
def test_round_trip_and_exact_length(m, n, data):
    """Any mask (rows of any counts, fuller than half or not) decodes to itself, and the code's
    length is the definition's, at most the bound of each row, never above the bitmask."""
    rows = [sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n))) for _ in range(m)]
    mask = np.zeros((m, n), dtype=bool)
    for i, r in enumerate(rows):
        mask[i, r] = True
    indptr, idx = _csr(mask)
    data_bytes, length = rice_encode(indptr, idx, n)
    assert length == rice_bits(indptr, idx, n)
    assert length == sum(_bruteforce_length(r, n) for r in rows)
    assert length <= sum(rice_bound(n, len(r)) for r in rows) <= m * n
    assert len(data_bytes) == -(-length // 8)
    assert np.array_equal(rice_decode(data_bytes, np.diff(indptr), n), idx)


def test_bound_is_the_minimum_over_p_and_vectorised_alike():
    """rice_bound = min over p of k'(p + 1) + ⌊(n − k')/2^p⌋ with k' = min(k, n − k); 0 for an
    empty or full row; rice_bounds gives the same for every k."""
    for n in (1, 2, 7, 64, 129, 576):
        table = rice_bounds(n)
        for k in range(n + 1):
            kk = coded_count(n, k)
            brute = 0 if kk == 0 else min(kk * (p + 1) + ((n - kk) >> p) for p in range(40))
            assert rice_bound(n, k) == brute == table[k]
            if kk:
                p = rice_parameter(n, kk)
                assert kk * (p + 1) + ((n - kk) >> p) == brute


def test_bound_approaches_the_entropy():
    """At 10 % density the bound is within 10 % of n·H(ρ) (and below the 1-bit bitmask)."""
    n, k = 10_000, 1_000
    rho = k / n
    entropy = n * -(rho * np.log2(rho) + (1 - rho) * np.log2(1 - rho))
    assert entropy <= rice_bound(n, k) <= 1.1 * entropy < n


def test_rice_count_is_the_largest_fitting_count():
    """The budget's count per row is the largest k whose values and bound fit, found by brute force."""
    for n, per_value, allowed in ((64, 3, 100), (64, 3, 250), (576, 4, 1000), (33, 2, 60), (10, 16, 5)):
        fits = [k for k in range(n + 1) if per_value * k + rice_bound(n, k) <= allowed]
        assert rice_count(n, per_value, allowed) == (max(fits) if fits else 0)


@pytest.mark.parametrize("method,extra", [("alternating", {"sparse_bits": 3}), ("wanda", {}),
                                          ("slab_obs", {"sparse_bits": 3, "l_group": 32})])
def test_solve_counts_the_exact_code_of_its_positions(method, extra):
    """bits = the budget's other terms + the exact Rice length of the solved S's pattern, within
    the requested bits per weight."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((24, 80))
    X = rng.standard_normal((200, 80))
    res = slabopt.solve(W, X, method=method, bits=2.5, rank=1, **extra)
    assert res.budget.positions == "rice"
    indptr, idx = np.asarray(res.sparse.indptr), np.asarray(res.sparse.indices)
    others = slabopt.storage_bits(res.shape, res.sparse.nnz, res.rank, 16, 0, res.signs_packed is not None,
                                  sparse_bits=extra.get("sparse_bits"), l_group=extra.get("l_group"))
    assert res.bits == others + rice_encode(indptr, idx, 80)[1]
    assert res.bits <= res.budget.bits <= 2.5 * W.size


def test_auto_positions_take_the_cheapest_exact_code():
    """positions="auto" is Rice codes for the row pattern (never above the bitmask, which then
    keeps fewer entries) and the N:M codes for an N:M pattern."""
    row = slabopt.budget((64, 256), 0.8, 1, positions="auto", sparse_bits=4)
    mask = slabopt.budget((64, 256), 0.8, 1, positions="bitmask", sparse_bits=4)
    assert row.positions == "rice" and row.nnz > mask.nnz and row.bits <= 0.2 * 16 * 64 * 256
    assert slabopt.budget((64, 256), None, 1, positions="auto", pattern="2:4").positions == "bitmask"
