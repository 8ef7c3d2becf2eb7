"""The loader users look for: ``slabopt.llm.load`` (model and tokenizer), ``load_compressed`` at the
package's top, and ``slabopt --version``."""

import pytest
import torch
from slabopt.llm import cli

import slabopt

from ._llm import quick_compress_args


def test_load_gives_model_and_tokenizer_that_generate(tmp_path):
    from slabopt.llm import load, load_compressed

    out = tmp_path / "out"
    assert cli.main([*quick_compress_args(tmp_path), "--rank", "1", "--out", str(out)]) == 0
    model, tok = load(out)
    same, manifest = load_compressed(out)
    assert manifest["complete"]
    ids = tok("hello world", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, same(ids).logits)
        new = model.generate(ids, do_sample=False, max_new_tokens=3, min_new_tokens=3,
                             pad_token_id=tok.unk_token_id)
    assert new.shape == (1, ids.shape[1] + 3)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"slabopt {slabopt.__version__}"


def test_compress_says_how_many_calibration_tokens_it_used(tmp_path, capsys):
    """--calib-tokens 20 with --seqlen 16 takes two whole windows, 32 tokens, and says so."""
    base = quick_compress_args(tmp_path)
    args = [a if a != "32" else "20" for a in base]  # the helper asks for 32 calibration tokens
    assert cli.main([*args, "--rank", "1", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "calibration: 32 tokens in 2 windows of 16 (--calib-tokens 20 rounded up to whole windows)" in out


# ----------------------------------------------------------- the rest of the model, its dtype
def _bf16_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    from ._llm import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt32")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "ckpt16")
    for f in ckpt.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            (tmp_path / "ckpt16" / f.name).write_bytes(f.read_bytes())
    return tmp_path / "ckpt16"


@pytest.mark.parametrize("asked, stored", [(None, torch.bfloat16), ("float32", torch.float32)])
def test_the_rest_is_stored_in_the_sources_dtype_unless_told(tmp_path, capsys, asked, stored):
    from safetensors import safe_open

    src = _bf16_checkpoint(tmp_path)
    out = tmp_path / "out"
    extra = [] if asked is None else ["--rest-dtype", asked]
    assert cli.main(["compress", "--model", str(src), "--calib-tokens", "32", "--seqlen", "16", "--max-iter",
                     "1", "--rank", "1", "--out", str(out), "-q", *extra]) == 0
    summary = capsys.readouterr().out
    with safe_open(str(out / "rest.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if "rotary" not in k and "inv_freq" not in k}
    assert dtypes == {stored}
    assert "whole folder" in summary and "source checkpoint" in summary
    model, _ = slabopt.llm.load_compressed(out)
    assert next(model.parameters()).dtype == torch.float32
