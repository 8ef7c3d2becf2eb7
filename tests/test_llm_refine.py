"""Block-level refinement (``--refine-steps``, llm/refine.py)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from slabopt.llm import cli  # noqa: E402
from slabopt.llm.arch import block_linears, decoder_layers  # noqa: E402
from slabopt.llm.loading import load_compressed  # noqa: E402
from slabopt.llm.pipeline import compress_model  # noqa: E402

from ._llm import quick_compress_args, tiny_model, windows  # noqa: E402

DISCRETE = ("mask", "nm_codes", "signs", "value_layout")


def _compress(path, steps, sparse_bits):
    return compress_model(tiny_model(), windows(n=4, seqlen=16), path, method="slab", ratio=0.6, rank=1,
                          max_iter=3, positions="bitmask", sparse_bits=sparse_bits, refine_steps=steps,
                          progress=False, log=None)


@pytest.mark.parametrize("sparse_bits", [None, 4])
def test_refinement_lowers_the_block_error_and_keeps_the_discrete_parts(tmp_path, sparse_bits):
    plain = _compress(tmp_path / "plain", 0, sparse_bits)
    tuned = _compress(tmp_path / "tuned", 8, sparse_bits)
    assert plain["settings"]["refine_steps"] == 0 and tuned["settings"]["refine_steps"] == 8
    for e in tuned["layers"]:
        assert e["block_loss_after_refine"] < e["block_loss_before_refine"]
    assert [e["bits"] for e in tuned["layers"]] == [e["bits"] for e in plain["layers"]]
    a, _ = load_compressed(tmp_path / "plain")
    b, _ = load_compressed(tmp_path / "tuned")
    block_a, block_b = (block_linears(decoder_layers(m)[0]) for m in (a, b))
    changed = False
    for name, mod in block_a.items():  # block 0 sees the same inputs in both runs
        other = block_b[name]
        for buf in DISCRETE + (("values",) if sparse_bits else ()):
            if getattr(mod, buf, None) is not None:
                torch.testing.assert_close(getattr(other, buf), getattr(mod, buf), rtol=0, atol=0)
        changed |= not torch.equal(mod.U, other.U)
    assert changed  # the factors were tuned


def test_refined_folder_reloads_to_the_same_logits(tmp_path):
    model = tiny_model()
    compress_model(model, windows(n=4, seqlen=16), tmp_path / "o", method="slab", ratio=0.6, rank=1,
                   max_iter=2, positions="bitmask", sparse_bits=8, refine_steps=3, progress=False, log=None)
    loaded, _ = load_compressed(tmp_path / "o")
    ids = windows()[:1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_cli_refine_steps(tmp_path, capsys):
    base = quick_compress_args(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([*base, "--refine-steps", "-1", "--out", str(tmp_path / "a")])
    assert exc.value.code == 2 and "must be >= 0" in capsys.readouterr().err
    assert cli.main([*base, "--refine-steps", "2", "--out", str(tmp_path / "b")]) == 0


def test_blocks_without_compressed_layers_are_left_alone(tmp_path):
    man = compress_model(tiny_model(), windows(n=4, seqlen=16), tmp_path / "o", method="slab", ratio=0.6,
                         rank=1, max_iter=2, refine_steps=2, targets=r"layers\.1\.", progress=False, log=None)
    assert {e["block"] for e in man["layers"]} == {1}
    assert all(e["block_loss_after_refine"] <= e["block_loss_before_refine"] for e in man["layers"])
