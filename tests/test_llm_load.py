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
