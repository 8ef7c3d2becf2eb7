"""``AutoModelForCausalLM.from_pretrained(folder)`` after ``import slabopt.llm`` (llm/hf_integration.py):
the same model as ``slabopt.llm.load``, ``save_pretrained`` and back, folders written before the
config entries, and the registration when slabopt is imported before transformers."""

import json
import shutil
import subprocess
import sys

import pytest
import slabopt.llm
import torch
from slabopt.llm import cli
from slabopt.llm.checkpoint import CONFIG, MANIFEST, transformers_entries
from slabopt.llm.data import sha256_file
from slabopt.llm.errors import UserError
from slabopt.llm.slablinear import SLaBLinear

from ._llm import quick_compress_args

IDS = torch.tensor([[5, 17, 3, 40, 2, 9, 33, 12]], device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama compressed by ``slabopt compress`` (coded values, rank 1)."""
    tmp = tmp_path_factory.mktemp("hf")
    out = tmp / "out"
    assert cli.main([*quick_compress_args(tmp), "--rank", "1", "--out", str(out)]) == 0
    return out


def _from_pretrained(path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _packed(model) -> dict[str, SLaBLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SLaBLinear)}


def _as_before(src, dst):
    """A copy of ``src`` as slabopt wrote folders before: config.json without the transformers
    entries (as transformers lays a config out), its hash in the manifest."""
    shutil.copytree(src, dst)
    config = json.loads((dst / CONFIG).read_text())
    for key in transformers_entries():
        del config[key]
    (dst / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    man = json.loads((dst / MANIFEST).read_text())
    man["files"][CONFIG] = sha256_file(dst / CONFIG)
    (dst / MANIFEST).write_text(json.dumps(man, indent=1))
    return dst


def test_from_pretrained_is_the_model_slabopt_loads(folder):
    """Packed layers, fused forward, logits exactly equal to ``slabopt.llm.load``'s (both float32);
    the config names the method; slabopt's own loader keeps those entries out of its model's config."""
    config = json.loads((folder / CONFIG).read_text())
    assert config["quantization_config"] == {"quant_method": "slabopt", "format": "slabopt-llm/2"}
    assert config["transformers_weights"] == "rest.safetensors"
    model = _from_pretrained(folder)
    ref, _ = slabopt.llm.load(folder)
    layers, ref_layers = _packed(model), _packed(ref)
    assert sorted(layers) == sorted(ref_layers) and len(layers) == 14
    assert all(m.use_fused and m._packed for m in layers.values())  # the kernel's arrays built at load
    assert not any(isinstance(m, torch.nn.Linear) for m in model.model.layers.modules())
    for name, mod in layers.items():
        for key, t in mod.state_dict().items():
            orig = ref_layers[name].state_dict()[key]
            assert torch.equal(t, orig) and t.dtype == orig.dtype
    assert torch.equal(_logits(model), _logits(ref))
    assert model.config.quantization_config.quant_method == "slabopt"
    assert ref.config.quantization_config.format == "slabopt-hf/1"  # what its save_pretrained writes
    assert not hasattr(ref.config, "transformers_weights")
    with pytest.raises(ValueError, match="one device"):
        _from_pretrained(folder, device_map="auto")


def test_save_pretrained_round_trip_and_dequantize(folder, tmp_path):
    """``save_pretrained`` writes a folder ``from_pretrained`` loads again: same buffers (dtypes
    too), exactly the same logits; ``dequantize`` gives dense layers computing the same within
    float32 rounding."""
    model = _from_pretrained(folder)
    before = _logits(model)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / CONFIG).read_text())["quantization_config"]
    assert config["format"] == "slabopt-hf/1" and config["modules"]["model.layers.1.mlp.up_proj"] == [80, 48]
    assert not (tmp_path / "saved" / MANIFEST).exists()
    again = _from_pretrained(tmp_path / "saved")
    assert sorted(_packed(again)) == sorted(_packed(model))
    for name, mod in _packed(again).items():
        for key, t in mod.state_dict().items():
            orig = _packed(model)[name].state_dict()[key]
            assert torch.equal(t, orig) and t.dtype == orig.dtype
    assert torch.equal(_logits(again), before)
    dense = again.dequantize()
    assert isinstance(dense.model.layers[0].mlp.up_proj, torch.nn.Linear) and not _packed(dense)
    assert torch.allclose(_logits(dense), before, rtol=1e-4, atol=1e-4)


def test_folder_written_before_gets_advice_then_loads(folder, tmp_path):
    """Without the entries: ``slabopt.llm.load`` as ever, ``from_pretrained`` one line of advice;
    ``add_transformers_config`` writes config.json as compress writes it now (the manifest still
    verifies) and then ``from_pretrained`` loads it; a second call changes nothing."""
    old = _as_before(folder, tmp_path / "old")
    ref, _ = slabopt.llm.load(old)
    with pytest.raises(OSError) as exc:
        _from_pretrained(old)
    msg = str(exc.value)
    assert "\n" not in msg and "slabopt.llm.add_transformers_config(" in msg and str(old) in msg
    assert json.loads((old / CONFIG).read_text()).get("quantization_config") is None  # untouched
    assert slabopt.llm.add_transformers_config(old) == old / CONFIG
    assert (old / CONFIG).read_bytes() == (folder / CONFIG).read_bytes()
    man = (old / MANIFEST).read_bytes()
    assert slabopt.llm.add_transformers_config(old) == old / CONFIG and (old / MANIFEST).read_bytes() == man
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert torch.equal(_logits(_from_pretrained(old)), _logits(ref))
    assert torch.equal(_logits(slabopt.llm.load(old)[0]), _logits(ref))


def test_add_transformers_config_refuses_what_slabopt_did_not_write(folder, tmp_path):
    """A folder without a slabopt manifest, or whose config.json was edited, is left as it was."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / CONFIG).write_text("{}")
    with pytest.raises(UserError, match="not a slabopt output folder"):
        slabopt.llm.add_transformers_config(foreign)
    assert (foreign / CONFIG).read_text() == "{}"
    edited = _as_before(folder, tmp_path / "edited")
    (edited / CONFIG).write_text((edited / CONFIG).read_text().replace('"vocab_size"', '"vocab_size" '))
    text = (edited / CONFIG).read_text()
    with pytest.raises(UserError, match="damaged"):
        slabopt.llm.add_transformers_config(edited)
    assert (edited / CONFIG).read_text() == text


def test_add_transformers_config_finishes_a_killed_run_and_keeps_foreign_files(folder, tmp_path):
    """Killed after the manifest took the new config's hash: the next call renames the new config
    into place. A file by the temporary's name with other contents is not slabopt's: refused, kept."""
    old = _as_before(folder, tmp_path / "old")
    new = old / (CONFIG + ".slabopt-new")
    new.write_bytes((folder / CONFIG).read_bytes())
    man = json.loads((old / MANIFEST).read_text())
    man["files"][CONFIG] = sha256_file(new)
    (old / MANIFEST).write_text(json.dumps(man, indent=1))
    with pytest.raises(UserError, match="damaged"):
        slabopt.llm.load(old)
    slabopt.llm.add_transformers_config(old)
    assert not new.exists() and (old / CONFIG).read_bytes() == (folder / CONFIG).read_bytes()
    assert isinstance(slabopt.llm.load(old)[0].model.layers[0].mlp.up_proj, SLaBLinear)
    other = _as_before(folder, tmp_path / "other")
    (other / (CONFIG + ".slabopt-new")).write_text("mine")
    with pytest.raises(UserError, match="did not write it"):
        slabopt.llm.add_transformers_config(other)
    assert (other / (CONFIG + ".slabopt-new")).read_text() == "mine"
    assert "quantization_config" not in json.loads((other / CONFIG).read_text())


def test_damaged_block_file_is_named(folder, tmp_path):
    """``from_pretrained`` checks every file's SHA-256 as ``slabopt.llm.load`` does."""
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    block = bad / "blocks" / "block_001.safetensors"
    data = bytearray(block.read_bytes())
    data[-1] ^= 0xFF
    block.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"block_001\.safetensors is damaged"):
        _from_pretrained(bad)


def test_import_slabopt_first_registers_when_transformers_loads(folder):
    """In a fresh process: ``import slabopt.llm`` imports no transformers model code (the CLI stays
    quick), and ``from_pretrained`` afterwards still gets slabopt's layers."""
    code = ("import sys, slabopt.llm\n"
            "assert 'transformers.modeling_utils' not in sys.modules\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
            "print(type(m.model.layers[1].self_attn.o_proj).__name__)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "SLaBLinear"


def test_save_pretrained_of_a_loaded_model_loads_again(folder, tmp_path):
    """The model ``slabopt.llm.load`` returns saves with ``save_pretrained`` into a folder that
    ``from_pretrained`` reads back with the same logits (never random layers in place of packed ones)."""
    model, _ = slabopt.llm.load(folder)
    model.save_pretrained(tmp_path / "saved")
    again = _from_pretrained(tmp_path / "saved")
    assert set(_packed(again)) == set(_packed(model))
    assert torch.equal(_logits(again), _logits(model))
