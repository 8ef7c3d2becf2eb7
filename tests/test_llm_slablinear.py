"""SLaBLinear (slabopt.llm.slablinear): a solved layer as a module, its saved format (N:M codes,
quantised codes, binarized parts) and the bits it stores."""

from __future__ import annotations

import dataclasses
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

import slabopt  # noqa: E402
from slabopt.binarized import BinarizedMatrix, bit_breakdown  # noqa: E402


def test_slablinear_matches_solver_result_and_budget():
    W = torch.randn(40, 72)
    d = torch.rand(72) + 0.1
    res = slabopt.solve(W, ratio=0.5, rank=2, col_norms=d, max_iter=5)
    mod = SLaBLinear.from_result(res, store_dtype=torch.float32)
    torch.testing.assert_close(mod.reconstruct(), res.reconstruct(), atol=1e-6, rtol=1e-6)
    m16 = SLaBLinear.from_result(res)  # 16-bit values: what is saved
    torch.testing.assert_close(m16.reconstruct(), res.reconstruct(), atol=5e-2, rtol=1e-2)
    # stored bytes: values + U + V at 2 bytes, 1 bit/entry for B and the sparsity bitmask
    expected = 2 * res.sparse.nnz + 2 * 2 * (40 + 72) + 2 * 40 * 9
    assert m16.storage_bytes() == expected


def _binarized_abs(q) -> torch.Tensor:
    """Σ_k |μ| + |α|·|β| over the terms of each entry of a binarized part (all signs +1)."""
    def ab(a):
        return None if a is None else torch.as_tensor(a).abs()

    return dataclasses.replace(
        q, signs=torch.ones_like(torch.as_tensor(q.signs)), signs2=torch.ones_like(torch.as_tensor(q.signs2)),
        row_scales=ab(q.row_scales), row_means=ab(q.row_means),
        column_scales_salient=ab(q.column_scales_salient),
        column_scales_other=ab(q.column_scales_other)).dequantize(torch.float32)


def _rounding_bound(res, eps: float) -> torch.Tensor:
    """Entrywise bound on |Ŵ(parts rounded to eps) − Ŵ(parts)| (first order in eps)."""
    m, n = res.shape
    B = torch.zeros(m, n)
    B += res.sparse.to_dense().abs()
    if res.U is not None:
        B += 2 * res.U.abs() @ res.V.abs().T
    if res.levels is not None:
        B += res.levels.abs().max(0).values[:, None]
    if res.row_offset is not None:
        B += res.row_offset.abs()[:, None]
    if isinstance(res.quant, BinarizedMatrix):  # |Δ(μ + α·β·s)| ≤ eps·|μ| + 2·eps·|α|·|β| per term
        B += _binarized_abs(res.quant)
    elif res.quant is not None:  # scales and zero points rounded: |Δ(s·(q − z))| ≤ eps·|s|·(|q| + 2|z|)
        q = res.quant
        groups = q.column_groups()
        s = q.scales.abs()[:, groups]
        z = 2.0 ** (q.bits - 1) if q.zeros is None else q.zeros.abs()[:, groups]
        B += s * (q.codes.float() + 2 * z)
    return 2 * eps * B + 1e-6


@pytest.mark.parametrize("value_bits", [16, 32])
@pytest.mark.parametrize("method", sorted(slabopt.methods()))
def test_saved_layer_is_the_solved_layer_and_counted_bits_are_stored(tmp_path, method, value_bits):
    from safetensors.torch import load_file, save_file

    from slabopt.registry import get_method

    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 40, generator=g)
    X = torch.randn(64, 40, generator=g)
    info = get_method(method)
    opts = {} if info.fixed_budget else {"project": True}
    ratio = None if info.quant_layout is not None else 0.5  # a quantiser's bits are fixed by its options
    res = slabopt.solve(W, X, ratio=ratio, rank=2, method=method, value_bits=value_bits, max_iter=3, **opts)
    store = {16: torch.float16, 32: torch.float32}[value_bits]
    save_file(SLaBLinear.from_result(res, store_dtype=store).state_dict(), str(tmp_path / "l.safetensors"))
    state = load_file(str(tmp_path / "l.safetensors"))
    layer = SLaBLinear.empty_like_state(state, res.shape)
    eps = {16: 2.0**-11, 32: 2.0**-24}[value_bits]
    diff = (layer.reconstruct(torch.float32) - res.reconstruct(torch.float32)).abs()
    assert bool((diff <= _rounding_bound(res, eps)).all()), float(diff.max())
    m, n = res.shape
    stored = sum(8 * t.numel() * t.element_size() for k, t in state.items()
                 if k not in ("mask", "nm", "nm_codes", "q_layout", "binarized.layout"))
    padding = m * (8 * -(-n // 8) - n) if "signs" in state else 0
    if isinstance(res.quant, BinarizedMatrix):  # each bit plane padded to a whole byte
        parts = bit_breakdown(res.quant.layout)
        padding += sum(-parts[k] % 8 for k in ("signs", "second_plane", "group_bitmap", "salient_columns"))
    elif res.quant is not None:  # codes padded to whole bytes per row, the group index to a byte
        q = res.quant.layout
        padding += m * (8 * -(-n * q.bits // 8) - n * q.bits)
        if q.group_index:
            w = (q.n_groups - 1).bit_length()
            padding += 8 * -(-n * w // 8) - n * w
    assert stored - padding == res.bits  # the sparsity bitmask is what ι = 0 leaves uncounted


def test_cached_weight_forward_matches_factored():
    W = torch.randn(24, 40)
    res = slabopt.solve(W, ratio=0.5, rank=1, max_iter=3)
    mod = SLaBLinear.from_result(res)
    x = torch.randn(3, 40)
    a = mod(x)
    mod.set_cache_weight(True)
    torch.testing.assert_close(mod(x), a, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
@pytest.mark.parametrize("method", ["alternating", "wanda", "sparsegpt", "magnitude"])
def test_nm_layers_store_combination_codes(tmp_path, method, pattern):
    from safetensors.torch import load_file, save_file
    from slabopt.llm import nm_codes

    g = torch.Generator().manual_seed(1)
    W, X = torch.randn(24, 40, generator=g), torch.randn(64, 40, generator=g)
    res = slabopt.solve(W, X, ratio=None, rank=1, method=method, pattern=pattern, max_iter=3)
    save_file(SLaBLinear.from_result(res, store_dtype=torch.float32).state_dict(), str(tmp_path / "l"))
    state = load_file(str(tmp_path / "l"))
    n, m = map(int, pattern.split(":"))
    assert "mask" not in state and state["nm_codes"].numel() == nm_codes.packed_bytes(24, 40, n, m)
    layer = SLaBLinear.empty_like_state(state, res.shape)
    torch.testing.assert_close(layer.reconstruct(), res.reconstruct(), rtol=1e-6, atol=1e-6)
    kept = layer.positions().reshape(24, 40 // m, m).sum(-1)
    assert bool((kept == n).all())


def test_nm_codes_refuse_a_mask_that_is_not_nm():
    from slabopt.llm import nm_codes

    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :3] = True
    with pytest.raises(ValueError, match="not 2:4"):
        nm_codes.encode(mask, 2, 4)


@pytest.mark.parametrize("opts", [dict(bits=3, group_size=16, act_order=True),
                                  dict(bits=8, group_size=None, symmetric=True),
                                  dict(bits=2, group_size=8, symmetric=False)])
def test_quantised_layers_round_trip_through_the_saved_format(tmp_path, opts):
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(3)
    W, X = torch.randn(24, 40, generator=g), torch.randn(64, 40, generator=g)
    res = slabopt.solve(W, X, ratio=None, method="gptq", **opts)
    save_file(SLaBLinear.from_result(res, store_dtype=torch.float32).state_dict(), str(tmp_path / "q"))
    state = load_file(str(tmp_path / "q"))
    assert "mask" not in state and ("q_index" in state) == (res.quant.group_index is not None)
    layer = SLaBLinear.empty_like_state(state, res.shape)
    q = layer.quant_matrix(torch.float32)
    assert torch.equal(q.codes, res.quant.codes) and q.bits == opts["bits"]
    torch.testing.assert_close(layer.reconstruct(), res.reconstruct(), rtol=0, atol=0)
    x = torch.randn(3, 40, generator=g)
    torch.testing.assert_close(layer(x), x @ res.reconstruct().T, rtol=1e-6, atol=1e-6)
