"""The console script (slabopt.llm.cli): compress and its options, error paths, interrupt and
resume, on a tiny local checkpoint (no download, fast)."""

from __future__ import annotations

import argparse
import json
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

from ._llm import quick_compress_args, save_checkpoint  # noqa: E402
from ._llm import run_cli as _run_cli  # noqa: E402
from ._llm import windows as _windows  # noqa: E402


def _with_tokenizer(d, tmp_path):
    import shutil

    src = save_checkpoint(tmp_path / "llama")
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, d / f.name)
    return d


def test_cli_unknown_model_path(tmp_path, capsys):
    code, _, err = _run_cli(["compress", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                            capsys)
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_cli_model_without_linear_layers(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=96)).save_pretrained(d)
    code, _, err = _run_cli(["compress", "--model", str(_with_tokenizer(d, tmp_path)), "--out",
                             str(tmp_path / "o")], capsys)
    assert code == 2 and "torch.nn.Linear" in err and "Traceback" not in err  # GPT-2 uses Conv1D


@pytest.mark.parametrize("kind", ["t5", "distilbert"])
def test_cli_models_that_are_not_decoders(tmp_path, capsys, kind):
    from transformers import AutoConfig, AutoModel

    d = tmp_path / kind
    cfg = AutoConfig.for_model(kind, vocab_size=96, d_model=16, dim=16, hidden_dim=32, n_layers=1,
                               num_layers=1, num_heads=2, n_heads=2, d_ff=32, d_kv=8)
    AutoModel.from_config(cfg).save_pretrained(d)
    code, _, err = _run_cli(["compress", "--model", str(_with_tokenizer(d, tmp_path)), "--out",
                             str(tmp_path / "o")], capsys)
    assert code == 2 and "decoder-only" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", [["--ratio", "1.5"], ["--ratio", "0"], ["--ratio", "abc"],
                                 ["--rank", "-1"], ["--calib-tokens", "0"]])
def test_cli_bad_numbers(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compress", "--out", str(tmp_path / "o"), *bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("ratio" in err or "integer" in err)


def test_cli_unknown_method(tmp_path, capsys):
    code, _, err = _run_cli(["compress", "--method", "nosuch", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown method" in err


def test_cli_output_exists(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "x.txt").write_text("mine")
    code, _, err = _run_cli(["compress", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err and "not a slabopt output folder" in err
    code, _, err = _run_cli(["compress", "--out", str(out), "--overwrite"], capsys)
    assert code == 2 and "not a slabopt output folder" in err and "refusing" in err
    assert (out / "x.txt").read_text() == "mine"
    code, _, err = _run_cli(["compress", "--out", str(out), "--resume"], capsys)
    assert code == 2 and "no manifest" in err
    code, _, err = _run_cli(["compress", "--out", str(out), "--resume", "--overwrite"], capsys)
    assert code == 2 and "at most one" in err


def test_cli_compress_eval_roundtrip_on_local_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "c"
    base = ["--model", str(tiny_checkpoint), "--calib-tokens", "64", "--seqlen", "16"]
    code, so, err = _run_cli(["compress", *base, "--method", "slab", "--ratio", "0.5", "--rank", "1",
                              "--max-iter", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "bytes on disk" in so and (out / "layers.log").read_text().count("block") == 14
    code, so, err = _run_cli(["eval", str(out), "--tokens", "64", "--seqlen", "16", "--json"], capsys)
    assert code == 0, err
    res = json.loads(so)
    assert res["perplexity"] > 1 and res["seqlen"] == 16 and res["method"] == "slab"
    # infeasible budget: a clear message naming the smallest ratio
    code, _, err = _run_cli(["compress", *base, "--ratio", "0.1", "--rank", "40", "--out",
                             str(tmp_path / "inf")], capsys)
    assert code == 2 and "Traceback" not in err and "ratio" in err
    # the folder exists now: compress again refuses, --resume on a complete folder is a no-op
    code, _, err = _run_cli(["compress", *base, "--max-iter", "2", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err
    code, _, err = _run_cli(["compress", *base, "--max-iter", "2", "--out", str(out), "--resume"], capsys)
    assert code == 0, err


def test_cli_binarized_compress_eval_and_bits(tiny_checkpoint, tmp_path, capsys):
    """``slabopt compress --method billm`` (no ratio) and ``slabopt eval`` of the folder; ``--bits``
    below what the binarization can cost is refused with the size it costs."""
    base = ["--model", str(tiny_checkpoint), "--calib-tokens", "32", "--seqlen", "16"]
    out = tmp_path / "b"
    code, so, err = _run_cli(["compress", *base, "--method", "billm", "--out", str(out)], capsys)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["settings"]["ratio"] is None
    code, so, err = _run_cli(["eval", str(out), "--tokens", "64", "--seqlen", "16", "--json"], capsys)
    assert code == 0, err
    res = json.loads(so)
    assert 1 < res["perplexity"] < float("inf") and res["method"] == "billm"
    code, so, err = _run_cli(["compress", *base, "--method", "arb", "--bits", "1.5", "--out",
                              str(tmp_path / "a")], capsys)
    assert code == 2 and "1.5 bits per weight" in err and "a size fixed by the algorithm" in err, err


def test_cli_interrupted_then_resume(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import slabopt.llm.pipeline as comp

    base = ["compress", "--model", str(tiny_checkpoint), "--calib-tokens", "48", "--seqlen", "16",
            "--max-iter", "2", "--seed", "4"]
    code, _, err = _run_cli([*base, "--out", str(tmp_path / "full")], capsys)
    assert code == 0, err
    real = comp.compress_model

    def interrupted(*a, **k):
        def stop(b):
            raise KeyboardInterrupt

        return real(*a, **k, on_block_done=stop)

    monkeypatch.setattr(comp, "compress_model", interrupted)
    code, _, err = _run_cli([*base, "--out", str(tmp_path / "part")], capsys)
    assert code == 130 and "--resume" in err
    monkeypatch.setattr(comp, "compress_model", real)
    code, _, err = _run_cli([*base, "--out", str(tmp_path / "part")], capsys)
    assert code == 2 and "already exists" in err
    code, _, err = _run_cli([*base, "--out", str(tmp_path / "part"), "--resume"], capsys)
    assert code == 0, err
    a, _ = load_compressed(tmp_path / "full")
    b, _ = load_compressed(tmp_path / "part")
    x = _windows(seed=2)
    with torch.no_grad():
        assert torch.equal(a(input_ids=x).logits, b(input_ids=x).logits)


def test_cli_option_parsing():
    assert cli._option("inner=20") == ("inner", 20)
    assert cli._option("rho = 0.5") == ("rho", 0.5)
    assert cli._option("adaptive=false") == ("adaptive", False)
    assert cli._option("init=zero") == ("init", "zero")
    for bad in ["inner", "=3", "_gram=true", "a b=1"]:
        with pytest.raises(argparse.ArgumentTypeError):
            cli._option(bad)


def test_cli_option_reaches_solver(tiny_checkpoint, tmp_path, capsys):
    base = ["--model", str(tiny_checkpoint), "--calib-tokens", "32", "--seqlen", "16", "--max-iter", "1",
            "--method", "admm", "--ratio", "0.5", "--rank", "1"]
    out = tmp_path / "a"
    code, _, err = _run_cli(["compress", *base, "--option", "inner=1", "--out", str(out)], capsys)
    assert code == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["options"] == {"inner": 1} and man["settings"]["max_iter"] == 1
    assert all(e["n_iter"] <= 2 for e in man["layers"])  # --max-iter 1 reaches admm (+ the start)
    # an unknown solver keyword is a clear error, not a traceback
    code, _, err = _run_cli(["compress", *base, "--option", "nosuch=1", "--out", str(tmp_path / "b")],
                            capsys)
    assert code == 2 and "nosuch" in err and "Traceback" not in err
    # compare gives each method only the options its solver accepts and names them under the table
    cmp = ["compare", "--model", str(tiny_checkpoint), "--ratios", "0.5", "--methods", "slab", "admm",
           "--calib-tokens", "32", "--seqlen", "16", "--tokens", "32", "--max-iter", "2", "--work-dir",
           str(tmp_path / "w"), "--no-progress"]
    code, so, err = _run_cli([*cmp, "--option", "inner=1"], capsys)
    assert code == 0, err
    assert "| admm | 0.5 |" in so and "| slab | 0.5 |" in so and "inner=1" in so
    man = json.loads((tmp_path / "w" / "admm-r0.5-rank1" / "manifest.json").read_text())
    assert man["settings"]["options"] == {"inner": 1}
    man = json.loads((tmp_path / "w" / "slab-r0.5-rank1" / "manifest.json").read_text())
    assert man["settings"]["options"] == {}
    code, _, err = _run_cli([*cmp, "--option", "nosuch=1"], capsys)
    assert code == 2 and "nosuch" in err and "none of the methods" in err


def test_cli_pattern_and_value_bits(tiny_checkpoint, tmp_path, capsys):
    base = ["--model", str(tiny_checkpoint), "--calib-tokens", "32", "--seqlen", "16", "--max-iter", "2"]
    out = tmp_path / "nm"
    code, so, err = _run_cli(["compress", *base, "--pattern", "2:4", "--out", str(out)], capsys)
    assert code == 0, err
    assert "pattern 2:4" in so
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["pattern"] == "2:4" and man["settings"]["ratio"] is None
    assert man["settings"]["sparse_bits"] == "auto"  # compress's recipe: coded values where they apply
    loaded, _ = load_compressed(out)
    lin = block_linears(decoder_layers(loaded)[0])
    assert all(hasattr(mod, "nm_codes") and hasattr(mod, "value_layout") for mod in lin.values())
    code, _, err = _run_cli(["compress", *base, "--pattern", "2:4", "--ratio", "0.6", "--sparse-bits", "none",
                             "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "ratio 0.6 allows" in err  # 16-bit values at 2:4 cost more than 0.4 of dense
    code, _, err = _run_cli(["compress", *base, "--pattern", "3:2", "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "0 < N < M" in err
    out32 = tmp_path / "v32"
    code, _, err = _run_cli(["compress", *base, "--value-bits", "32", "--sparse-bits", "none", "--out",
                             str(out32)], capsys)
    assert code == 0, err
    loaded, man = load_compressed(out32)
    assert man["settings"]["value_bits"] == 32
    assert all(m.values.dtype == torch.float32 for m in block_linears(decoder_layers(loaded)[0]).values())


@pytest.mark.parametrize("value_bits", [16, 32])
def test_cli_size_report_measures_against_the_layers_dense_bits(tmp_path, capsys, value_bits):
    """The budget and disk ratios of the manifest (and printed by compress) are those of the
    layers' own dense size, b·m·n bits at the run's value bits b (the budget's dense bits), not
    of a 16-bit dense size: at 32 bits and ratio 0.5 the budget ratio is at least 0.5."""
    out = tmp_path / "o"
    code = cli.main([*quick_compress_args(tmp_path), "--value-bits", str(value_bits), "--ratio", "0.5",
                     "--out", str(out)])
    so, err = capsys.readouterr()
    assert code == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["value_bits"] == value_bits
    dense_bits = sum(value_bits * e["shape"][0] * e["shape"][1] for e in man["layers"])
    budget_bits = sum(e["bits"] for e in man["layers"])
    disk_bytes = sum(f.stat().st_size for f in (out / "blocks").glob("block_*.safetensors"))
    s = man["sizes"]
    assert s["linear_budget_ratio"] == pytest.approx(1 - budget_bits / dense_bits, rel=1e-12)
    assert s["linear_disk_ratio"] == pytest.approx(1 - 8 * disk_bytes / dense_bits, rel=1e-12)
    assert s["linear_budget_ratio"] >= 0.5 and all(e["ratio"] >= 0.5 for e in man["layers"])
    assert s["linear_bytes_on_disk"] == disk_bytes and s["linear_budget_bytes"] == budget_bits / 8
    assert s["linear_dense_bytes"] == dense_bits // 8
    assert f"budget ratio {1 - budget_bits / dense_bits:.4f}" in so
    assert f"{100 * (1 - 8 * disk_bytes / dense_bits):.1f}% removed on disk" in so
    assert f"{dense_bits // 8:,} dense at {value_bits}-bit values" in so


def test_cli_compress_and_compare_quantisers(tiny_checkpoint, tmp_path, capsys):
    base = ["--model", str(tiny_checkpoint), "--calib-tokens", "32", "--seqlen", "16"]
    out = tmp_path / "g"
    code, so, err = _run_cli(["compress", *base, "--method", "gptq", "--option", "bits=4", "--option",
                              "group_size=16", "--out", str(out)], capsys)
    assert code == 0, err
    summary = next(line for line in so.splitlines() if line.startswith("compressed "))
    assert summary.startswith("compressed gptq (bits=4, group_size=16): 6 bits per weight")
    assert "rank" not in summary and "None" not in summary and "pattern" not in summary
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["ratio"] is None  # 4-bit codes + 2 fp16 values per 16: 6 of 16 bits
    assert all(e["ratio"] == pytest.approx(1 - 6 / 16) for e in man["layers"])
    loaded, _ = load_compressed(out)
    mod = block_linears(decoder_layers(loaded)[0])["mlp.up_proj"]
    assert mod.quant_matrix().bits == 4 and not hasattr(mod, "mask")
    code, so, err = _run_cli(["compress", *base, "--method", "rtn", "--option", "bits=8", "--option",
                              "group_size=none", "--ratio", "0.5", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "ratio 0.5" in err  # 8 bits + scales is a little more than half of 16 bits
    code, so, err = _run_cli(["compare", *base, "--tokens", "32", "--ratios", "0.5", "0.6", "--methods",
                              "wanda", "rtn", "--option", "bits=4", "--work-dir", str(tmp_path / "w"),
                              "--no-progress"], capsys)
    assert code == 0, err
    assert so.count("| rtn | - (fixed) |") == 1 and so.count("| wanda |") == 2


def test_cli_positions_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compress", "--positions", "csr", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "invalid choice: 'csr'" in capsys.readouterr().err
