"""compress_model (slabopt.llm.pipeline) on a tiny random LlamaForCausalLM with GQA shapes: the
compressed model, its saved folder reloaded, resume (no download, fast)."""

from __future__ import annotations

import copy
import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from slabopt.llm.arch import block_linears, decoder_layers  # noqa: E402
from slabopt.llm.errors import UserError  # noqa: E402
from slabopt.llm.loading import load_compressed  # noqa: E402
from slabopt.llm.pipeline import compress_model  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

import slabopt  # noqa: E402
from slabopt.binarized import bit_breakdown  # noqa: E402

from ._llm import tiny_model  # noqa: E402
from ._llm import windows as _windows  # noqa: E402

METHODS = ["slab", "magnitude", "wanda", "sparsegpt", "oats", "svd"]


def _available(method):
    from slabopt.llm.pipeline import solver_name

    if solver_name(method) not in slabopt.methods():
        pytest.skip(f"method {method!r} is not registered yet")


def _rank(method):
    return 6 if method == "svd" else 1


@pytest.mark.parametrize("method", METHODS)
def test_compressed_forward_equals_dense_reconstruction(tmp_path, method):
    _available(method)
    model = tiny_model()
    compress_model(model, _windows(), tmp_path / "out", method=method, ratio=0.5, rank=_rank(method),
                   max_iter=3, progress=False, log=None)
    dense = copy.deepcopy(model)
    for block in decoder_layers(dense):
        for name, mod in block_linears(block).items():
            assert isinstance(mod, SLaBLinear)
            lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=False)
            lin.weight.data = mod.reconstruct(torch.float32)
            parent, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent), child, lin)
    x = _windows(seed=7)
    with torch.no_grad():
        a, b = model(input_ids=x).logits, dense(input_ids=x).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # per-layer: the module forward equals x @ Ŵᵀ on random inputs
    for block in decoder_layers(model):
        for mod in block_linears(block).values():
            xin = torch.randn(4, 5, mod.in_features)
            torch.testing.assert_close(mod(xin), xin @ mod.reconstruct().T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["billm", "arb"])
def test_binarized_model_saves_reloads_and_counts_its_bytes(tmp_path, method):
    """compress (ratio None: the binarization fixes the size) -> folder -> load_compressed: every
    layer reloads to the same Ŵ and logits, its forward is x Ŵᵀ, and the bytes of its buffers are the
    bits the log counts, up to the padding of each bit plane and the layout record."""
    from safetensors.torch import load_file

    model = tiny_model()
    out = tmp_path / "out"
    man = compress_model(model, _windows(), out, method=method, ratio=None, max_iter=3, progress=False,
                         log=None)
    loaded, _ = load_compressed(out)
    x = _windows(seed=5)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)
    entries = iter(man["layers"])
    for b, (mine, theirs) in enumerate(zip(decoder_layers(model), decoder_layers(loaded), strict=True)):
        state = load_file(str(out / f"blocks/block_{b:03d}.safetensors"))
        for name, mod in block_linears(theirs).items():
            entry = next(entries)
            assert entry["name"] == name and isinstance(mod, SLaBLinear) and mod.has_quant
            same = block_linears(mine)[name].reconstruct()
            torch.testing.assert_close(mod.reconstruct(), same, rtol=0, atol=0)
            xin = torch.randn(3, mod.in_features)
            torch.testing.assert_close(mod(xin), xin @ mod.reconstruct().T, rtol=1e-5, atol=1e-5)
            parts = bit_breakdown(mod.quant_matrix().layout)
            stored = sum(8 * t.numel() * t.element_size() for k, t in state.items()
                         if k.startswith(f"{name}.") and k != f"{name}.binarized.layout")
            padding = sum(-parts[k] % 8 for k in ("signs", "second_plane", "group_bitmap", "salient_columns"))
            assert stored - padding == entry["bits"] == sum(parts.values())
    assert next(entries, None) is None


def test_save_load_identical_logits_and_manifest(tmp_path):
    model = tiny_model()
    out = tmp_path / "out"
    man = compress_model(model, _windows(), out, method="slab", ratio=0.6, rank=1, seed=3, max_iter=3,
                         progress=False, log=None)
    loaded, man2 = load_compressed(out)
    x = _windows(seed=5)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)
    assert man2["complete"] and man2["settings"]["method"] == "slab"
    for key in ("ratio", "rank", "seed", "value_bits", "index_bits", "max_iter", "calib_tokens"):
        assert key in man2["settings"]
    assert man2["slabopt_version"] == slabopt.__version__
    assert len(man["layers"]) == 2 * 7
    s = man["sizes"]
    assert 0 < s["linear_bytes_on_disk"] < s["linear_dense16_bytes"]
    assert s["linear_budget_ratio"] >= 0.6
    # no pickle: only safetensors and JSON in the folder
    suffixes = {p.suffix for p in out.rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".log"}
    assert not (out / "resume.safetensors").exists()


def test_stats_shared_between_qkv_and_gate_up(tmp_path):
    model = tiny_model(layers=1)
    man = compress_model(model, _windows(), tmp_path / "o", method="wanda", ratio=0.5, rank=0,
                         progress=False, log=None)
    owner = {e["name"]: e["stats_from"] for e in man["layers"]}
    assert owner["self_attn.k_proj"] == owner["self_attn.v_proj"] == "self_attn.q_proj"
    assert owner["mlp.up_proj"] == "mlp.gate_proj"
    assert owner["self_attn.o_proj"] == "self_attn.o_proj"
    assert owner["mlp.down_proj"] == "mlp.down_proj"


class _Kill(Exception):
    pass


def test_resume_writes_the_same_bytes_as_an_uninterrupted_run(tmp_path):
    from ._llm import folder_bytes

    kw = dict(method="slab", ratio=0.5, rank=1, seed=11, max_iter=3, progress=False, log=None)
    full = tiny_model(layers=3)
    compress_model(full, _windows(), tmp_path / "full", **kw)

    def kill_after_first(b):
        if b == 0:
            raise _Kill

    part = tiny_model(layers=3)
    with pytest.raises(_Kill):
        compress_model(part, _windows(), tmp_path / "part", on_block_done=kill_after_first, **kw)
    man = json.loads((tmp_path / "part" / "manifest.json").read_text())
    assert man["next_block"] == 1 and not man["complete"]
    with pytest.raises(UserError, match="unfinished"):
        load_compressed(tmp_path / "part")
    fresh = tiny_model(layers=3)  # a new process: the model starts dense again
    man2 = compress_model(fresh, _windows(), tmp_path / "part", resume=True, **kw)
    man_full = json.loads((tmp_path / "full" / "manifest.json").read_text())
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in man_full["layers"]]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in man2["layers"]] == strip
    assert man2["files"] == man_full["files"]
    assert folder_bytes(tmp_path / "part") == folder_bytes(tmp_path / "full")
    a, _ = load_compressed(tmp_path / "full")
    b, _ = load_compressed(tmp_path / "part")
    x = _windows(seed=9)
    with torch.no_grad():
        assert torch.equal(a(input_ids=x).logits, b(input_ids=x).logits)


def test_resume_refuses_other_settings(tmp_path):
    kw = dict(method="slab", rank=1, max_iter=2, progress=False, log=None)

    def kill(b):
        raise _Kill

    with pytest.raises(_Kill):
        compress_model(tiny_model(), _windows(), tmp_path / "o", ratio=0.5, on_block_done=kill, **kw)
    with pytest.raises(UserError, match="settings differ"):
        compress_model(tiny_model(), _windows(), tmp_path / "o", ratio=0.6, resume=True, **kw)


def test_dropping_finished_blocks_writes_the_same_folder(tmp_path):
    from ._llm import folder_bytes

    kw = dict(method="slab", ratio=0.5, rank=1, seed=2, max_iter=2, progress=False, log=None)
    compress_model(tiny_model(layers=3), _windows(), tmp_path / "keep", **kw)
    lean = tiny_model(layers=3)
    compress_model(lean, _windows(), tmp_path / "drop", keep_in_memory=False, **kw)
    assert folder_bytes(tmp_path / "drop") == folder_bytes(tmp_path / "keep")
    assert all(p.is_meta for blk in decoder_layers(lean) for p in blk.buffers() if p.numel())


def test_positions_bitmask_makes_the_ratio_the_ratio_on_disk(tmp_path):
    """--positions bitmask: the budget pays for the saved mask, so the stored tensors of every
    compressed layer are at least ``ratio`` smaller than 16-bit dense; under the default the mask
    overshoots the budget by 1 bit per weight."""
    for positions in ("index", "bitmask"):
        man = compress_model(tiny_model(), _windows(), tmp_path / positions, method="slab", ratio=0.5, rank=1,
                             max_iter=2, positions=positions, sparse_bits=None, progress=False, log=None)
        assert man["settings"]["positions"] == positions
        model, _ = load_compressed(tmp_path / positions)
        layers = [m for m in model.modules() if isinstance(m, SLaBLinear)]
        for mod in layers:  # 48 and 80 inputs: whole bytes per row, no padding
            dense = 16 * mod.in_features * mod.out_features
            stored = 8 * mod.storage_bytes()
            if positions == "bitmask":
                assert stored <= dense // 2
            else:
                assert stored > dense // 2
        assert len(layers) == 14
