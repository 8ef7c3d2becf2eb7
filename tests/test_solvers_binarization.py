"""billm and arb against line-by-line transcriptions of the authors' code
(tests/_reference_binarization.py: BiLLM at Aaronhuang-778/BiLLM f7f9e14, ARB-LLM_RC at
ZHITENGLI/ARB-LLM 8512765/d57e7f7, float64, no CUDA), and their bits on disk counted by hand from
what the result stores.
"""

import math

import numpy as np
import pytest

import slabopt
from slabopt.binarized import BinarizedLayout, bit_breakdown, paper_bits

torch = pytest.importorskip("torch")

from ._reference_binarization import reference_arb_rc, reference_billm  # noqa: E402


def layer(seed, m=96, n=384, N=768, dead=()):
    """Heavy-tailed weights with outlier rows, columns and entries; correlated inputs with spread
    scales and a few outlier channels. X is scaled so that the authors' H = 2/N·XᵀX has max
    diagonal 1: it is then slabopt's H too (H = XᵀX / max_j ‖X_j‖²), which matters only for dead
    inputs, whose H_jj = 1 the authors put into the mean of the damping."""
    rng = np.random.default_rng(seed)
    W = rng.standard_t(2.5, size=(m, n)) * np.exp(rng.normal(0, 0.5, (m, 1))) * 0.02
    W *= np.exp(rng.normal(0, 0.6, n))
    W[rng.random((m, n)) < 0.002] *= 25
    Z = rng.standard_normal((N, n))
    mix = np.eye(n) + rng.standard_normal((n, n)) * (0.6 / np.sqrt(n))
    X = (Z @ mix + 0.8 * rng.standard_normal((N, 4)) @ rng.standard_normal((4, n))) * np.exp(
        rng.normal(0, 0.7, n))
    X[:, rng.choice(n, 3, replace=False)] *= 15
    X[:, list(dead)] = 0
    X *= np.sqrt(N / 2 / np.max(np.sum(X * X, axis=0)))
    return W, X


SHAPES = [(64, 256), (96, 384), (96, 320)]  # 2 and 3 blocks of 128; 320 = 128 + 128 + 64
TOL = 1e-10  # relative to max |W|; the differences seen are ~1e-15


def stored_bits(q, value_bits=16):
    """Every bit the binarized part stores, counted from its arrays: 1 per boolean, b per value."""
    flags = [q.salient, q.signs, q.signs2, q.groups, q.salient_groups]
    values = [q.row_scales, q.row_means, q.column_scales_salient, q.column_scales_other]
    return (sum(int(np.asarray(a).size) for a in flags if a is not None)
            + value_bits * sum(int(np.asarray(a).size) for a in values if a is not None))


def salient_of(masks, groups):
    """The salient columns the authors' code chose: the columns of its salient masks."""
    return np.concatenate([np.any([mk[g] for g in groups], axis=0)[0] for mk in masks])


def _check_result(res, W_ref, W):
    q = res.quant
    W_hat = res.reconstruct()
    assert float(np.max(np.abs(W_hat - W_ref))) <= TOL * float(np.max(np.abs(W)))
    np.testing.assert_array_equal(W_hat, q.dequantize())
    assert res.bits == stored_bits(q) == q.storage_bits(16)
    assert res.quant.layout == res.budget.quant and res.budget.quant.salient_columns is None
    assert res.budget.bits >= res.bits  # the declared layout counts the most salient columns
    return q


@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_billm_matches_the_authors_code(m, n):
    W, X = layer(seed=m + n, m=m, n=n)
    W_ref, masks = reference_billm(W, X)
    res = slabopt.solve(W, X, ratio=None, method="billm")
    q = _check_result(res, W_ref, W)
    salient = salient_of(masks, [2])
    np.testing.assert_array_equal(q.salient, salient)
    large = np.concatenate([mk[1] for mk in masks], axis=1)  # the authors' mask2: |t| ≥ split
    np.testing.assert_array_equal(q.groups, large[:, ~salient])
    S, blocks = int(salient.sum()), math.ceil(n / 128)
    # signs + second plane + group bitmap = 2 bits per weight; salient bitmap; 8 values per row and block
    assert res.bits == 2 * m * n + n + 16 * 8 * m * blocks
    assert paper_bits(q.layout) == m * n + m * S
    assert res.info["salient_per_block"] == [int(mk[2][0].sum()) for mk in masks]


@pytest.mark.parametrize(("m", "n", "cgb"),
                         [(64, 256, True), (96, 384, True), (96, 320, True), (96, 384, False)])
def test_arb_rc_matches_the_authors_code(m, n, cgb):
    W, X = layer(seed=m + n + 1, m=m, n=n)
    W_ref, masks = reference_arb_rc(W, X, order2_group=cgb)
    res = slabopt.solve(W, X, ratio=None, method="arb", column_group_bitmap=cgb)
    q = _check_result(res, W_ref, W)
    salient = salient_of(masks, [0, 1] if cgb else [0])
    np.testing.assert_array_equal(q.salient, salient)
    large = np.concatenate([mk[-2] for mk in masks], axis=1)  # best_mask2: the larger non-salient group
    np.testing.assert_array_equal(q.groups, large[:, ~salient])
    S, blocks = int(salient.sum()), math.ceil(n / 128)
    if cgb:
        big = np.concatenate([mk[0] for mk in masks], axis=1)  # best_mask5: the larger salient group
        np.testing.assert_array_equal(q.salient_groups, big[:, salient])
        # signs + second plane + bitmap on every weight; 6 row scales per row and block;
        # column scales: 4 per salient column, 2 per other column
        assert res.bits == 2 * m * n + m * S + n + 16 * (6 * m * blocks + 4 * S + 2 * (n - S))
    else:
        assert q.salient_groups is None
        assert res.bits == 2 * m * n + n + 16 * (4 * m * blocks + 2 * n)


@pytest.mark.parametrize("method", ["billm", "arb"])
@pytest.mark.parametrize("metric", ["hessian", "magnitude"])
def test_dead_inputs_and_the_magnitude_metric(method, metric):
    W, X = layer(seed=5, m=64, n=320, dead=(5, 130, 131))
    ref = reference_billm if method == "billm" else reference_arb_rc
    W_ref, _ = ref(W, X, salient_metric=metric)
    res = slabopt.solve(W, X, ratio=None, method=method, metric=metric)
    _check_result(res, W_ref, W)


def test_the_comparison_tells_a_small_change_apart():
    """The tolerance is far below what a small change of the algorithm moves: λ 0.01 → 0.0101,
    or 14 ARB refinement rounds instead of the authors' 15 (``max_iter``, 15 by default)."""
    W, X = layer(seed=3, m=64, n=256)
    scale = float(np.max(np.abs(W)))
    for method, ref in (("billm", reference_billm), ("arb", reference_arb_rc)):
        W_ref, _ = ref(W, X, percdamp=0.0101)
        W_hat = slabopt.solve(W, X, ratio=None, method=method).reconstruct()
        assert float(np.max(np.abs(W_hat - W_ref))) > 1e3 * TOL * scale
    W_ref, _ = reference_arb_rc(W, X)
    assert float(np.max(np.abs(slabopt.solve(W, X, ratio=None, method="arb", max_iter=15).reconstruct()
                                - W_ref))) <= TOL * scale
    assert float(np.max(np.abs(slabopt.solve(W, X, ratio=None, method="arb", max_iter=14).reconstruct()
                                - W_ref))) > 1e3 * TOL * scale


def test_a_short_last_block_searches_fewer_columns():
    """The authors' code needs ≥ 50 columns in every block (torch.topk(·, 50) fails otherwise);
    slabopt searches 1 … width − 1 columns of a shorter block and counts what it stores."""
    W, X = layer(seed=8, m=48, n=300)  # blocks of 128, 128, 44
    with pytest.raises(RuntimeError):
        reference_billm(W, X)
    for method in ("billm", "arb"):
        res = slabopt.solve(W, X, ratio=None, method=method)
        q = res.quant
        assert 1 <= res.info["salient_per_block"][2] <= 43
        assert res.bits == stored_bits(q) and q.layout.most_salient() == 49 + 49 + 43
        np.testing.assert_array_equal(res.reconstruct(), q.dequantize())


def test_a_requested_ratio_is_checked_against_the_most_salient_columns():
    W, X = layer(seed=4, m=64, n=256)
    most = BinarizedLayout((64, 256), 128, 49, means=True, column_scales=False, salient_split=False)
    assert most.storage_bits() == 2 * 64 * 256 + 256 + 16 * 8 * 64 * 2  # BiLLM's bits do not depend on S
    with pytest.raises(slabopt.InfeasibleBudgetError):
        slabopt.solve(W, X, ratio=0.82, method="billm")
    res = slabopt.solve(W, X, ratio=0.8, method="arb", column_group_bitmap=False)
    assert res.ratio >= 0.8 and res.requested_ratio == 0.8
    with pytest.raises(slabopt.InfeasibleBudgetError):
        slabopt.solve(W, X, ratio=0.78, method="arb")  # up to 49 salient columns per block with CGB


def test_bits_are_checked_against_the_most_salient_columns_like_a_ratio():
    """solve(bits=B): billm and arb have no code width to set; B becomes the ratio 1 − B/b, checked
    against the most they can store (3.015625 bits per weight for BiLLM here, whatever S)."""
    W, X = layer(seed=4, m=64, n=256)
    res = slabopt.solve(W, X, bits=3.015625, method="billm")
    assert res.bits == 3.015625 * 64 * 256 and res.requested_ratio == 1 - 3.015625 / 16
    cost = r"\(= 3 bits per weight\).* up to 3\.0156 bits per weight .*fixed by the algorithm"
    with pytest.raises(slabopt.InfeasibleBudgetError, match=cost):
        slabopt.solve(W, X, bits=3, method="billm")
    res = slabopt.solve(W, X, bits=4, method="arb")
    assert res.bits <= res.budget.bits <= 4 * 64 * 256 and "bits" not in res.settings
    with pytest.raises(ValueError, match="not both"):
        slabopt.solve(W, X, bits=4, ratio=None, method="arb")


def test_bit_breakdown_and_the_papers_count():
    lay = BinarizedLayout((576, 576), 128, 49, means=False, column_scales=True, salient_split=True,
                          salient_columns=40)
    parts = bit_breakdown(lay)
    assert parts == {"signs": 576 * 576, "second_plane": 576 * 40, "group_bitmap": 576 * 576,
                     "salient_columns": 576, "row_values": 16 * 576 * 5 * 6,
                     "column_scales": 16 * (40 * 4 + 536 * 2)}
    assert lay.storage_bits() == sum(parts.values())
    assert paper_bits(lay) == 576 * 576 + 576 * 40


def test_float32_torch_input():
    W, X = layer(seed=11, m=32, n=256)
    W32, X32 = W.astype(np.float32), X.astype(np.float32)
    for method in ("billm", "arb"):
        res = slabopt.solve(torch.from_numpy(W32), torch.from_numpy(X32), ratio=None, method=method)
        q = res.quant
        assert isinstance(q.row_scales, torch.Tensor) and q.row_scales.dtype == torch.float32
        assert q.signs.dtype == torch.bool and res.reconstruct().dtype == torch.float32
        ref = slabopt.solve(W32, X32, ratio=None, method=method)
        np.testing.assert_array_equal(q.salient.numpy(), ref.quant.salient)
        assert res.bits == ref.bits
        np.testing.assert_allclose(res.reconstruct().numpy(), ref.reconstruct(), atol=1e-6)
