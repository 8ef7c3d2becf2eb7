"""Exact bit budgets (docs/formulation.md §4)."""

import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import slabopt
from slabopt import InfeasibleBudgetError, budget, storage_bits


def ratio_of(bits, b, m, n):
    return 1 - Fraction(bits, b * m * n)


@given(
    m=st.integers(1, 300),
    n=st.integers(1, 300),
    ratio=st.floats(0.01, 0.99),
    rank_frac=st.floats(0, 1),
    b=st.sampled_from([4, 8, 16, 32]),
    iota=st.integers(0, 16),
    pattern=st.sampled_from(["row", "global"]),
)
def test_budget_is_largest_feasible(m, n, ratio, rank_frac, b, iota, pattern):
    rank = int(rank_frac * min(m, n))
    try:
        bud = budget((m, n), ratio, rank, pattern=pattern, value_bits=b, index_bits=iota)
    except InfeasibleBudgetError:
        # even k = 0 must then be over the budget
        assert ratio_of(storage_bits((m, n), 0, rank, b, iota, rank > 0), b, m, n) < Fraction(ratio)
        return
    assert ratio_of(bud.bits, b, m, n) >= Fraction(ratio)  # never over
    step = m if pattern == "row" else 1  # the next allowed nnz
    if bud.nnz + step <= m * n:
        more = storage_bits((m, n), bud.nnz + step, rank, b, iota, rank > 0)
        assert ratio_of(more, b, m, n) < Fraction(ratio)  # the next one would be over
    if pattern == "row":
        assert bud.nnz == bud.nnz_per_row * m


def test_spec_worked_example():
    bud = budget((4096, 4096), 0.5, 1)
    assert bud.density == pytest.approx(0.437, abs=5e-4)
    assert bud.ratio >= 0.5
    expected = (16 * 4096 * 4096 // 2 - 16 * 1 * 8192 - 4096 * 4096) // 16
    assert bud.nnz == expected // 4096 * 4096


def test_infeasible_names_largest_reachable_ratio():
    # rank 1: 16·1·128 + 64·64 bits of 16·64·64 are fixed -> at most 1 − 1/16 − 1/32 = 0.90625
    with pytest.raises(InfeasibleBudgetError, match=r"largest reachable ratio is 0\.906250"):
        budget((64, 64), 0.95, 1)
    # rank 0 stores no B: 5% of 4096 = 204.8 values -> 3 per row of 64
    assert budget((64, 64), 0.95, 0).nnz == 192
    with pytest.raises(InfeasibleBudgetError, match="rank 64"):
        budget((64, 64), 0.5, 64)


def test_infeasible_at_any_ratio_asks_for_a_lower_rank():
    W = np.random.default_rng(0).standard_normal((64, 96))
    # rank 64 costs 16·64·160 + 64·96 bits > 16·64·96: no ratio in (0, 1) is reachable;
    # rank 16 fits ratio 0.5 (47104 <= 49152 bits), rank 17 does not (49664)
    with pytest.raises(InfeasibleBudgetError) as exc:
        slabopt.solve(W)
    message = str(exc.value)
    assert "-0." not in message and "ratio <=" not in message
    assert "lower the rank to at most 16" in message
    assert budget((64, 96), 0.5, 16).nnz >= 0
    with pytest.raises(InfeasibleBudgetError):
        budget((64, 96), 0.5, 17)


def suggested(message):
    ratio = re.search(r"ratio <= ([0-9.e-]+)", message)
    rank = re.search(r"at most (\d+)", message)
    return (None if ratio is None else float(ratio.group(1)), None if rank is None else int(rank.group(1)))


@given(m=st.integers(1, 40), n=st.integers(1, 40), ratio=st.floats(0.01, 0.99),
       rank_frac=st.floats(0, 1), b=st.sampled_from([2, 4, 8, 16]))
def test_infeasible_message_suggests_only_reachable_values(m, n, ratio, rank_frac, b):
    rank = round(rank_frac * min(m, n))
    try:
        budget((m, n), ratio, rank, value_bits=b)
    except InfeasibleBudgetError as exc:
        best, largest = suggested(str(exc))
        assert best is not None or largest is not None
        if best is not None:
            assert 0 < best < 1 and budget((m, n), best, rank, value_bits=b).ratio >= best
        if largest is not None:
            assert 0 <= largest < rank and budget((m, n), ratio, largest, value_bits=b).ratio >= ratio
            if largest + 1 < rank:
                with pytest.raises(InfeasibleBudgetError):
                    budget((m, n), ratio, largest + 1, value_bits=b)


def test_nm_pattern_fixes_nnz_and_reports_ratio():
    bud = budget((8, 16), 0.5, 1, pattern="2:4")
    assert bud.nnz == 8 * 8 and bud.nnz_per_row == 8
    assert bud.ratio == pytest.approx(float(ratio_of(bud.bits, 16, 8, 16)))
    assert budget((8, 16), None, 1, pattern="2:4").nnz == 64
    with pytest.raises(ValueError, match="multiple of 4"):
        budget((8, 10), 0.5, 1, pattern="2:4")


def test_components_change_accounting():
    sparse_only = budget((100, 200), 0.5, 8, components=("sparse",))
    assert sparse_only.rank == 0 and not sparse_only.binary
    assert sparse_only.nnz == 100 * 200 // 2
    full = budget((100, 200), 0.5, 8)
    assert full.bits == 16 * full.nnz + 16 * 8 * 300 + 100 * 200


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ratio": 0.0}, ValueError, r"open interval \(0, 1\)"),
        ({"ratio": 1.0}, ValueError, r"open interval"),
        ({"ratio": float("nan")}, ValueError, r"open interval"),
        ({"ratio": "0.5"}, TypeError, r"ratio must be a number in \(0, 1\), got str"),
        ({"rank": -1}, ValueError, r"rank must be in \[0, 10\]"),
        ({"rank": 11}, ValueError, r"rank must be in \[0, 10\]"),
        ({"rank": 2.5}, TypeError, "rank must be an integer"),
        ({"rank": True}, TypeError, "rank must be an integer"),
        ({"pattern": "diag"}, ValueError, "known patterns"),
        ({"pattern": "4:2"}, ValueError, "0 < N < M"),
        ({"value_bits": 0}, ValueError, "value_bits"),
        ({"index_bits": -1}, ValueError, "index_bits"),
    ],
)
def test_budget_bad_arguments(kwargs, error, match):
    args = {"ratio": 0.5, "rank": 1, **kwargs}
    with pytest.raises(error, match=match):
        slabopt.budget((10, 20), **args)


# ---------------------------------------------------------------- positions="bitmask" (§4.6)
@given(
    m=st.integers(1, 200),
    n=st.integers(1, 200),
    ratio=st.floats(0.01, 0.99),
    rank_frac=st.floats(0, 1),
    pattern=st.sampled_from(["row", "global"]),
)
def test_bitmask_budget_is_largest_feasible_with_the_mask_counted(m, n, ratio, rank_frac, pattern):
    rank = int(rank_frac * min(m, n))
    try:
        bud = budget((m, n), ratio, rank, pattern=pattern, positions="bitmask")
    except InfeasibleBudgetError:
        assert ratio_of(storage_bits((m, n), 0, rank, 16, 0, rank > 0), 16, m, n) < Fraction(ratio)
        return
    mask = m * n if bud.nnz else 0
    assert bud.bits == storage_bits((m, n), bud.nnz, rank, 16, 0, rank > 0) + mask
    assert ratio_of(bud.bits, 16, m, n) >= Fraction(ratio)
    step = m if pattern == "row" else 1
    if bud.nnz + step <= m * n:  # one step more (the mask always counted then) would be over
        more = storage_bits((m, n), bud.nnz + step, rank, 16, 0, rank > 0) + m * n
        assert ratio_of(more, 16, m, n) < Fraction(ratio)


def test_bitmask_costs_one_bit_per_entry_and_nm_codes_their_width():
    free = budget((64, 128), 0.5, 4, pattern="row")
    counted = budget((64, 128), 0.5, 4, pattern="row", positions="bitmask")
    assert free.nnz - counted.nnz == 64 * 128 // 16  # 1 bit per entry = 1/16 of a 16-bit value
    assert counted.bits <= free.bits
    nm = budget((64, 128), None, 4, pattern="2:4", positions="bitmask")
    assert nm.bits - budget((64, 128), None, 4, pattern="2:4").bits == 64 * 32 * 3  # C(4,2)=6: 3 bits


def test_bitmask_with_no_room_for_a_mask_stores_no_sparse_part():
    # rank 4 with B leaves 0.5 bit per entry: less than the bitmask, so S is empty and no mask is paid
    fixed = 16 * 4 * (64 + 64) + 64 * 64  # U, V and B
    ratio = 1 - (fixed + 64 * 64 // 2) / (16 * 64 * 64)
    bud = budget((64, 64), ratio, 4, positions="bitmask")
    assert bud.nnz == 0 and bud.position_bits() == 0 and bud.bits == fixed
    assert budget((64, 64), ratio, 4).nnz == 64 * 64 // 2 // 16 // 64 * 64  # free positions: some fit


def test_bitmask_solve_stores_the_counted_bits_and_ratio_is_on_disk():
    from slabopt.llm.slablinear import SLaBLinear
    torch = pytest.importorskip("torch")
    W = torch.randn(48, 80, generator=torch.Generator().manual_seed(0))
    res = slabopt.solve(W, ratio=0.6, rank=2, positions="bitmask", max_iter=3)
    layer = SLaBLinear.from_result(res)
    stored_bits = 8 * layer.storage_bytes()  # mask, values, U, V, signs: all counted now
    assert stored_bits == res.bits  # 80 is a multiple of 8: no byte padding
    assert res.ratio >= 0.6


def test_bitmask_rejects_index_bits():
    with pytest.raises(ValueError, match="index_bits must be 0"):
        budget((8, 8), 0.5, 1, positions="bitmask", index_bits=8)
    with pytest.raises(ValueError, match="positions"):
        budget((8, 8), 0.5, 1, positions="csr")
