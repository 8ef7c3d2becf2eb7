"""Saved models whose sparse values are q-bit codes (``--sparse-bits``, docs/formulation.md §4.7)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from slabopt.llm import cli, fused  # noqa: E402
from slabopt.llm.errors import UserError  # noqa: E402
from slabopt.llm.loading import load_compressed  # noqa: E402
from slabopt.llm.pipeline import compress_model  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

import slabopt  # noqa: E402

from ._llm import check_forward, quick_compress_args, tiny_model  # noqa: E402
from ._llm import windows as _windows  # noqa: E402


def coded_result(m=24, n=43, q=4, rank=1, ratio=0.6, pattern="row"):
    g = torch.Generator().manual_seed(q + n)
    W = torch.randn(m, n, generator=g) * 0.05
    d = torch.rand(n, generator=g) + 0.1
    return slabopt.solve(W, col_norms=d, ratio=ratio, rank=rank, sparse_bits=q, pattern=pattern,
                         positions="bitmask")


@pytest.mark.parametrize("q", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("rank", [0, 1, 3])
@pytest.mark.parametrize("n", [43, 200])  # the bit-by-bit tail only; three 64-column chunks and a tail
def test_layer_stores_codes_and_decodes_them_exactly(q, rank, n):
    res = coded_result(q=q, rank=rank, n=n)
    mod = SLaBLinear.from_result(res)
    m, k = res.sparse_codes.shape
    assert mod.values.dtype == torch.uint8 and tuple(mod.values.shape) == (m, math.ceil(k * q / 8))
    assert mod.value_scales.dtype == torch.float16 and mod.nnz == res.sparse.nnz
    torch.testing.assert_close(mod.sparse_dense(), res.sparse.to_dense(), rtol=0, atol=0)
    x = torch.randn(5, n, generator=torch.Generator().manual_seed(1))
    want = x @ mod.reconstruct().T
    torch.testing.assert_close(mod.reference_forward(x), want, rtol=1e-5, atol=1e-6)
    if fused.HAVE_NUMBA:
        assert mod.fused_supported()
        kept = mod._packed_parts().values  # the kernel reads one signed byte per value
        assert kept.dtype == np.int8 and kept.nbytes == mod.nnz
        if q == 8:  # ... the stored bytes themselves, not a copy
            assert np.shares_memory(kept, mod.values.numpy())
        torch.testing.assert_close(mod.fused_forward(x[:2]), want[:2], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mod.blocked_forward(x), want, rtol=1e-5, atol=1e-6)


def test_layer_bytes_are_the_counted_bits():
    res = coded_result(m=16, n=64, q=4, ratio=0.7)  # n and k·q whole bytes: nothing padded
    mod = SLaBLinear.from_result(res)
    assert (res.sparse_codes.shape[1] * 4) % 8 == 0
    assert 8 * mod.storage_bytes() == res.bits + 8 * mod.value_layout.numel() * 4  # + the 8-byte layout


def test_state_round_trip():
    res = coded_result(q=3, rank=2)
    mod = SLaBLinear.from_result(res)
    state = {k: v.clone() for k, v in mod.state_dict().items()}
    again = SLaBLinear.empty_like_state(state, (24, 43))
    torch.testing.assert_close(again.reconstruct(), mod.reconstruct(), rtol=0, atol=0)


def test_compress_save_load_with_codes(tmp_path):
    model = tiny_model()
    out = tmp_path / "q8"
    man = compress_model(model, _windows(), out, method="slab", ratio=0.5, rank=1, max_iter=2,
                         positions="bitmask", sparse_bits=8, progress=False, log=None)
    assert man["settings"]["sparse_bits"] == 8
    loaded, _ = load_compressed(out)
    layers = [m for m in loaded.modules() if isinstance(m, SLaBLinear)]
    assert len(layers) == 14
    for mod in layers:
        assert int(mod.value_layout[0]) == 8
        assert 8 * mod.storage_bytes() <= 16 * mod.in_features * mod.out_features // 2 + 64
    ids = _windows()[:1]
    with torch.no_grad():
        a = model(ids).logits
        b = loaded(ids).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError):  # resuming with other settings is refused
        compress_model(tiny_model(), _windows(), out, method="slab", ratio=0.5, rank=1, max_iter=2,
                       positions="bitmask", sparse_bits=4, progress=False, log=None, resume=True)


@pytest.mark.parametrize("q", [4, 8])
def test_loading_unpacks_codes_below_8_bits_once_and_pages_out_the_packed_ones(tmp_path, monkeypatch, q):
    """q < 8: the kernel reads one byte per value, unpacked when the model is loaded; the packed
    codes' pages are then advised out (read back from the file only to save, reconstruct or run
    the reference path). q = 8 is read in place and keeps its pages."""
    pytest.importorskip("numba")
    from slabopt.llm import loading

    model = tiny_model()
    out = tmp_path / f"q{q}"
    compress_model(model, _windows(), out, method="slab", ratio=0.5, rank=1, max_iter=2,
                   positions="bitmask", sparse_bits=q, progress=False, log=None)
    advised = []
    monkeypatch.setattr(loading, "page_out", lambda t: advised.append(t.data_ptr()) or True)
    loaded, _ = load_compressed(out)
    layers = [m for m in loaded.modules() if isinstance(m, SLaBLinear)]
    assert all(m._packed for m in layers)  # built at load
    assert sorted(advised) == (sorted(m.values.data_ptr() for m in layers) if q < 8 else [])
    ids = _windows()[:1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_codes_keep_more_entries_at_equal_bytes(tmp_path):
    sizes = {}
    for q in (None, 8):
        out = tmp_path / f"q{q}"
        compress_model(tiny_model(), _windows(), out, method="slab", ratio=0.5, rank=1, max_iter=2,
                       positions="bitmask", sparse_bits=q, progress=False, log=None)
        man = json.loads((out / "manifest.json").read_text())
        sizes[q] = (sum(e["nnz"] for e in man["layers"]), sum(e["bits"] for e in man["layers"]))
    assert sizes[8][0] > 1.8 * sizes[None][0]
    assert sizes[8][1] <= sizes[None][1] * 1.01


def test_cli_sparse_bits(tmp_path, capsys):
    base = quick_compress_args(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([*base, "--sparse-bits", "9", "--out", str(tmp_path / "a")])
    assert exc.value.code == 2 and "sparse bits must be in [2, 8], got 9" in capsys.readouterr().err
    code = cli.main([*base, "--method", "rtn", "--sparse-bits", "4", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "stores no sparse part" in err and "Traceback" not in err
    code = cli.main([*base, "--method", "wanda", "--ratio", "0.6", "--sparse-bits", "4", "--out",
                     str(tmp_path / "c")])
    assert code == 0, capsys.readouterr().err
    man = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert man["settings"]["sparse_bits"] == 4 and np.all([e["nnz"] > 0 for e in man["layers"]])


def test_cli_compress_defaults_to_the_recipe(tmp_path, capsys):
    """compress: coded values (auto) and a budget that pays for the bitmask unless told otherwise;
    methods without a row sparse part (rtn, global pattern) get no codes instead of an error."""
    base = quick_compress_args(tmp_path)
    runs = {"slab": [], "rtn": ["--method", "rtn", "--ratio", "0.7"], "global": ["--pattern", "global"]}
    for name, extra in runs.items():
        code = cli.main([*base, *extra, "--out", str(tmp_path / name)])
        assert code == 0, capsys.readouterr().err
        settings = json.loads((tmp_path / name / "manifest.json").read_text())["settings"]
        assert settings["positions"] == "bitmask"
        assert settings["sparse_bits"] == ("auto" if name == "slab" else None)


def _random_coded_layer(m, n, k, q, rank, seed):
    """A layer with k coded values per row at random positions, built without a solver."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.zeros(m, n, dtype=torch.bool)
    for i in range(m):
        keep[i, torch.randperm(n, generator=g)[:k]] = True
    mod = SLaBLinear(n, m, nnz=m * k, rank=rank, has_signs=rank > 0, value_codes=(q, k))
    if k:
        mod.mask.copy_(slabopt.pack_signs(keep))
    from slabopt.llm.bitpack import pack_uint

    mod.values.copy_(pack_uint(torch.randint(0, 2**q, (m, k), generator=g), q))
    mod.value_scales.copy_(torch.rand(m, generator=g).to(torch.float16))
    if rank:
        mod.U.copy_(torch.randn(m, rank, generator=g).to(torch.float16))
        mod.V.copy_(torch.randn(n, rank, generator=g).to(torch.float16))
        mod.signs.copy_(slabopt.pack_signs(torch.rand(m, n, generator=g) < 0.5))
    mod.rebuild_index()
    return mod


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 200), frac=st.floats(0, 1), q=st.integers(2, 8),
       rank=st.integers(0, 3), rows=st.integers(1, 6), seed=st.integers(0, 2**16))
@example(m=10, n=1, frac=1.0, q=4, rank=2, rows=2, seed=1193)  # S and L⊙B cancel (CI, stop 18)
def test_fused_forward_of_random_coded_layers(m, n, frac, q, rank, rows, seed):
    """Any count per row (0..n), any q, odd n: fused and blocked forward equal x Ŵᵀ."""
    pytest.importorskip("numba")
    mod = _random_coded_layer(m, n, round(frac * n), q, rank, seed)
    assert mod.fused_supported()
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        for got in (mod.fused_forward(x), mod.blocked_forward(x)):
            check_forward(mod, got, x)
