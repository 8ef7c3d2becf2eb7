"""Model-level checks on the shipped SmolLM2-135M (slow: excluded from the default run)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from slabopt.llm import cli, data  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    try:
        data.gguf_path()
    except data.UserError as exc:
        pytest.skip(str(exc))
    return data.load_model()


def test_loader_cache_and_config(smollm):
    model, _tok, path = smollm
    assert (path / "model.safetensors").is_file()
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    from slabopt.llm.arch import block_linears, decoder_layers

    assert sum(len(block_linears(b)) for b in decoder_layers(model)) == 210
    assert data.dequantised_checkpoint() == path  # second call hits the cache


def test_dense_perplexity_matches_spec(smollm):
    from slabopt.llm.evaluate import perplexity

    model, tok, path = smollm
    _, test = data.token_splits(tok, path)
    res = perplexity(model, test, 8 * 1024, 1024)
    assert abs(res["perplexity"] - 12.1) < 0.15, res  # formulation §7: ≈ 12.1, first 8 × 1024 tokens


def test_cli_compress_eval_smollm(tmp_path, capsys):
    out = tmp_path / "mag"
    code = cli.main(["compress", "--method", "magnitude", "--ratio", "0.5", "--rank", "0",
                     "--calib-tokens", "256", "--seqlen", "256", "--out", str(out)])
    assert code == 0
    capsys.readouterr()
    code = cli.main(["eval", str(out), "--tokens", "512", "--seqlen", "256", "--json"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert 1 < res["perplexity"] < 1e6 and res["ratio"] == 0.5
    man = json.loads((out / "manifest.json").read_text())
    assert len(man["layers"]) == 210
    assert man["sizes"]["linear_bytes_on_disk"] < man["sizes"]["linear_dense16_bytes"]
