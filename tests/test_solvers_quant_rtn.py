"""rtn against a direct formula; QuantizedMatrix; the bits of a quantised part; ratio for rtn/gptq."""

import math

import numpy as np
import pytest

import slabopt
from slabopt import InfeasibleBudgetError, QuantizedMatrix, QuantLayout, budget, dense_weight, storage_bits

rng = np.random.default_rng(31)
W = rng.standard_t(2.5, size=(24, 300)) * np.exp(rng.normal(0, 0.5, (24, 1)))
X = rng.standard_normal((200, 300)) * rng.uniform(0.1, 3.0, 300)


def rtn_by_formula(W, bits, group_size, sym):
    """Codes, scales and zero points written out: range [min(w, 0), max(w, 0)] of each row and group
    (±max|w| when symmetric), 2^bits − 1 steps, zero point round(−low/scale) or 2^(bits−1)."""
    m, n = W.shape
    G = n if group_size is None else group_size
    codes, scales, zeros = np.zeros((m, n)), [], []
    for c in range(0, n, G):
        w = W[:, c:c + G]
        lo, hi = np.minimum(w.min(1), 0), np.maximum(w.max(1), 0)
        if sym:
            hi = np.maximum(-lo, hi)
            lo = np.where(lo < 0, -hi, lo)
        s = (hi - lo) / (2**bits - 1)
        z = np.full(m, 2.0 ** (bits - 1)) if sym else np.round(-lo / s)
        codes[:, c:c + G] = np.clip(np.round(w / s[:, None]) + z[:, None], 0, 2**bits - 1)
        scales.append(s)
        zeros.append(z)
    return codes, np.stack(scales, 1), np.stack(zeros, 1)


@pytest.mark.parametrize(("bits", "group_size", "sym"), [
    (8, None, True), (4, 128, False), (4, None, False), (3, 64, True), (2, 7, False), (5, 300, False),
    (4, 1000, True),
])
def test_rtn_is_the_formula(bits, group_size, sym):
    res = slabopt.solve(W, X, ratio=None, method="rtn", bits=bits, group_size=group_size, symmetric=sym)
    codes, scales, zeros = rtn_by_formula(W, bits, group_size, sym)
    q = res.quant
    assert (q.bits, q.group_size, q.symmetric) == (bits, group_size, sym)
    np.testing.assert_array_equal(q.codes, codes.astype(np.uint8))
    np.testing.assert_array_equal(q.scales, scales)
    if sym:
        assert q.zeros is None
    else:
        np.testing.assert_array_equal(q.zeros, zeros)
    # round to nearest: within half a step of W (every row has a negative entry, no clipping)
    G = W.shape[1] if group_size is None else group_size
    step = np.repeat(scales, G, axis=1)[:, :W.shape[1]]
    assert np.all(np.abs(res.reconstruct() - W) <= step / 2 * (1 + 1e-12))
    m, n = W.shape
    assert res.bits == bits * m * n + 16 * (scales.size + (0 if sym else zeros.size))
    assert res.ratio == 1 - res.bits / (16 * m * n) and res.requested_ratio is None


def test_rtn_defaults_are_the_usual_settings():
    """bits=4, groups of 128 asymmetric; symmetric=None is symmetric per output channel."""
    q = slabopt.solve(W, ratio=None, method="rtn").quant
    assert (q.bits, q.group_size, q.symmetric) == (4, 128, False)
    assert q.scales.shape == q.zeros.shape == (24, 3)
    q8 = slabopt.solve(W, ratio=None, method="rtn", bits=8, group_size=None).quant
    assert (q8.symmetric, q8.scales.shape, q8.zeros) == (True, (24, 1), None)
    g = slabopt.solve(W, X, ratio=None, method="gptq").quant
    assert (g.bits, g.group_size, g.symmetric) == (4, 128, False)
    assert slabopt.solve(W, X, ratio=None, method="gptq", symmetric=None, group_size=None).quant.symmetric


def test_quantized_matrix_dequantize_and_groups():
    codes = np.array([[0, 15, 7, 8, 3], [1, 2, 3, 4, 5]], dtype=np.uint8)
    scales = np.array([[0.5, 2.0], [1.0, -1.0]])
    zeros = np.array([[8.0, 0.0], [1.0, 2.0]])
    q = QuantizedMatrix(codes, scales, zeros, bits=4, group_size=3)
    assert q.layout == QuantLayout((2, 5), 4, 3, False) and q.layout.n_groups == 2
    expected = np.array([[0.5 * -8, 0.5 * 7, 0.5 * -1, 2.0 * 8, 2.0 * 3],
                         [0.0, 1.0, 2.0, -1.0 * 2, -1.0 * 3]])
    np.testing.assert_array_equal(q.dequantize(), expected)
    # a column-to-group index overrides j // group_size
    qi = QuantizedMatrix(codes, scales, zeros, bits=4, group_size=3, group_index=np.array([1, 0, 1, 0, 0]))
    np.testing.assert_array_equal(qi.column_groups(), [1, 0, 1, 0, 0])
    assert qi.dequantize()[0, 0] == 2.0 * (0 - 0.0) and qi.dequantize()[0, 1] == 0.5 * (15 - 8)
    assert qi.storage_bits(16) == 4 * 10 + 16 * 8 + 5 * 1
    # symmetric: zero point 2^(bits−1)
    qs = QuantizedMatrix(codes, scales[:, :1], None, bits=4, group_size=None)
    np.testing.assert_array_equal(qs.dequantize(), scales[:, :1] * (codes - 8.0))
    assert qs.storage_bits(16) == 4 * 10 + 16 * 2 and qs.storage_bits(32) == 4 * 10 + 32 * 2
    # dense_weight adds it to the other parts
    S = np.eye(2, 5)
    np.testing.assert_array_equal(dense_weight(S, quant=q), S + q.dequantize())
    with pytest.raises(ValueError, match="scales must be 2×2"):
        QuantizedMatrix(codes, scales[:, :1], zeros, bits=4, group_size=3)
    with pytest.raises(TypeError, match="uint8"):
        QuantizedMatrix(codes.astype(np.int32), scales, zeros, bits=4, group_size=3)
    with pytest.raises(ValueError, match="quant has shape"):
        dense_weight(np.zeros((3, 5)), quant=q)


def test_quantized_matrix_torch():
    torch = pytest.importorskip("torch")
    Wt = torch.from_numpy(W.astype(np.float32))
    res = slabopt.solve(Wt, ratio=None, method="rtn")
    q = res.quant
    assert q.codes.dtype == torch.uint8 and q.scales.dtype == torch.float32
    ref = slabopt.solve(W.astype(np.float32), ratio=None, method="rtn").quant
    np.testing.assert_array_equal(q.codes.numpy(), ref.codes)
    torch.testing.assert_close(q.dequantize(), torch.from_numpy(ref.dequantize()), rtol=0, atol=0)
    assert q.dequantize(torch.float64).dtype == torch.float64


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_ratio_is_achieved_and_a_given_ratio_is_never_exceeded(method):
    m, n = W.shape
    free = slabopt.solve(W, X, ratio=None, method=method, bits=4, group_size=128)
    bits = 4 * m * n + 16 * 2 * m * 3
    assert free.bits == bits == free.budget.bits and free.requested_ratio is None
    assert free.ratio == pytest.approx(1 - bits / (16 * m * n), rel=1e-15)
    ok = slabopt.solve(W, X, ratio=0.7, method=method, bits=4, group_size=128)
    assert ok.bits == bits and ok.ratio >= 0.7 and ok.requested_ratio == 0.7
    np.testing.assert_array_equal(ok.reconstruct(), free.reconstruct())
    with pytest.raises(InfeasibleBudgetError, match=r"pass ratio=None .* ratio <= 0\.73"):
        slabopt.solve(W, X, ratio=0.75, method=method, bits=4, group_size=128)
    # int8 per channel costs just over half the 16-bit matrix: the default ratio 0.5 is refused
    with pytest.raises(InfeasibleBudgetError, match="8-bit symmetric codes per output channel"):
        slabopt.solve(W, X, method=method, bits=8, group_size=None, symmetric=True)
    # 32-bit values: scales cost 32 bits, the dense matrix 32 per entry
    r32 = slabopt.solve(W, X, ratio=None, method=method, bits=4, group_size=128, value_bits=32)
    assert r32.bits == 4 * m * n + 32 * 2 * m * 3 and r32.dense_bits == 32 * m * n


def test_budget_and_storage_bits_count_the_quantised_part():
    lay = QuantLayout((100, 300), 3, 128, False)
    assert lay.n_groups == 3 and lay.storage_bits(16) == 3 * 30000 + 16 * 600
    assert storage_bits((100, 300), 0, 0, 16, 0, False, quant=lay) == lay.storage_bits(16)
    bud = budget((100, 300), None, 0, components=("quant",), quant=lay)
    assert bud.bits == lay.storage_bits(16) and bud.nnz == 0 and bud.quant == lay
    with pytest.raises(ValueError, match="exactly when"):
        budget((100, 300), None, 0, components=("quant",))
    with pytest.raises(ValueError, match="exactly when"):
        budget((100, 300), 0.5, 0, components=("sparse",), quant=lay)
    # quantised codes plus a sparse part: the sparse part takes the bits left over
    both = budget((100, 300), 0.75, 0, components=("sparse", "quant"), quant=lay)
    left = 0.25 * 16 * 30000 - lay.storage_bits(16)
    assert both.bits <= 0.25 * 16 * 30000 and both.nnz == left // 16 // 100 * 100
    idx = QuantLayout((100, 300), 4, 64, True, group_index=True)
    assert idx.storage_bits(16) == 4 * 30000 + 16 * 100 * 5 + 300 * math.ceil(math.log2(5))


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"bits": 1}, ValueError, r"bits must be in \[2, 8\]"),
    ({"bits": 9}, ValueError, r"bits must be in \[2, 8\]"),
    ({"group_size": 0}, ValueError, "group_size must be >= 1"),
    ({"group_size": 2.5}, TypeError, "group_size must be an integer"),
    ({"symmetric": "yes"}, TypeError, "symmetric must be"),
])
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_bad_quantiser_options_are_refused(method, options, error, match):
    with pytest.raises(error, match=match):
        slabopt.solve(W, X, ratio=None, method=method, **options)


def test_bad_gptq_options_are_refused():
    with pytest.raises(ValueError, match="static_groups=True needs a group_size"):
        slabopt.solve(W, X, ratio=None, method="gptq", group_size=None, static_groups=True)
    with pytest.raises(TypeError, match="act_order must be True or False"):
        slabopt.solve(W, X, ratio=None, method="gptq", act_order=1)
    with pytest.raises(ValueError, match="blocksize must be >= 1"):
        slabopt.solve(W, X, ratio=None, method="gptq", blocksize=0)


def test_a_method_must_store_what_it_declares():
    from slabopt.problem import Decomposition
    from slabopt.quantized import quant_layout

    def layout(shape, options):
        return quant_layout(shape, 4, None, True)

    def liar(problem, *, bits=4):
        q = slabopt.solve(problem.W, ratio=None, method="rtn", bits=bits, group_size=None).quant
        return Decomposition(quant=q, history=[0.0])

    with pytest.raises(ValueError, match="quant_layout exactly when"):
        slabopt.register_method("test_quant_liar", liar, description="x", components=("quant",))
    slabopt.register_method("test_quant_liar", liar, description="x", components=("quant",),
                            quant_layout=layout, overwrite=True)
    assert slabopt.solve(W, ratio=None, method="test_quant_liar").bits == layout(W.shape, {}).storage_bits()
    with pytest.raises(RuntimeError, match="stored a quantised part"):
        slabopt.solve(W, ratio=None, method="test_quant_liar", bits=3)
