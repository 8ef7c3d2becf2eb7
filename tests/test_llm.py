"""slabopt.llm on a tiny random LlamaForCausalLM with GQA shapes (no download, fast)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
from slabopt.llm.checkpoint import load_compressed  # noqa: E402
from slabopt.llm.errors import UserError  # noqa: E402
from slabopt.llm.pipeline import compress_model  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

import slabopt  # noqa: E402
from slabopt.binarized import BinarizedMatrix, bit_breakdown  # noqa: E402

from ._llm import quick_compress_args, save_checkpoint, tiny_model  # noqa: E402
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


# ------------------------------------------------------------------------------ CLI error paths
def _run_cli(argv, capsys):
    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_unknown_model_path(tmp_path, capsys):
    code, _, err = _run_cli(["compress", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                            capsys)
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_cli_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    code, _, err = _run_cli(["eval", "dense", "--model", str(tmp_path / "m")], capsys)
    assert code == 2 and "config.json" in err


def _with_tokenizer(d, tmp_path):
    import shutil

    src = save_checkpoint(tmp_path / "llama")
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, d / f.name)
    return d


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


def test_cli_eval_missing_folder(tmp_path, capsys):
    code, _, err = _run_cli(["eval", str(tmp_path / "none")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run_cli(["eval", str(tmp_path / "empty")], capsys)
    assert code == 2 and "manifest" in err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny Llama folder with a small WordLevel tokenizer (no download, fast tokenisation)."""
    return save_checkpoint(tmp_path_factory.mktemp("tiny"))


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


def test_cli_compare_writes_table_and_plot(tiny_checkpoint, tmp_path, capsys):
    code, so, err = _run_cli(["compare", "--model", str(tiny_checkpoint), "--ratios", "0.5",
                              "--methods", "magnitude", "slab", "--calib-tokens", "32", "--seqlen", "16",
                              "--tokens", "32", "--max-iter", "2", "--work-dir", str(tmp_path / "w"),
                              "--no-progress"], capsys)
    assert code == 0, err
    assert "| dense" in so and "| slab | 0.5 |" in so and "| magnitude | 0.5 |" in so
    assert (tmp_path / "w" / "results.png").stat().st_size > 1000
    assert (tmp_path / "w" / "results.md").is_file()


def test_wiki_split_follows_spec():
    from slabopt.llm.data import wiki_articles

    try:
        arts = wiki_articles()
    except Exception as exc:  # package not installed
        pytest.skip(str(exc))
    assert len(arts) > 10000 - 100
    assert arts[0].startswith("0\n")


def test_cached_weight_forward_matches_factored():
    W = torch.randn(24, 40)
    res = slabopt.solve(W, ratio=0.5, rank=1, max_iter=3)
    mod = SLaBLinear.from_result(res)
    x = torch.randn(3, 40)
    a = mod(x)
    mod.set_cache_weight(True)
    torch.testing.assert_close(mod(x), a, atol=1e-5, rtol=1e-5)


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


def test_dropping_finished_blocks_writes_the_same_folder(tmp_path):
    from ._llm import folder_bytes

    kw = dict(method="slab", ratio=0.5, rank=1, seed=2, max_iter=2, progress=False, log=None)
    compress_model(tiny_model(layers=3), _windows(), tmp_path / "keep", **kw)
    lean = tiny_model(layers=3)
    compress_model(lean, _windows(), tmp_path / "drop", keep_in_memory=False, **kw)
    assert folder_bytes(tmp_path / "drop") == folder_bytes(tmp_path / "keep")
    assert all(p.is_meta for blk in decoder_layers(lean) for p in blk.buffers() if p.numel())


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


def test_cli_compare_at_an_nm_pattern(tiny_checkpoint, tmp_path, capsys):
    code, so, err = _run_cli(["compare", "--model", str(tiny_checkpoint), "--pattern", "2:4", "--methods",
                              "wanda", "slab", "--calib-tokens", "32", "--seqlen", "16", "--tokens", "32",
                              "--max-iter", "2", "--work-dir", str(tmp_path / "w"), "--no-progress"], capsys)
    assert code == 0, err
    assert "| wanda | - (fixed) |" in so and "| slab | - (fixed) |" in so and "pattern 2:4" in so
    assert (tmp_path / "w" / "slab-2of4-rank1" / "manifest.json").is_file()


def test_cli_eval_and_compare_report_zero_shot(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    from slabopt.llm.zeroshot import data_dir

    try:
        data_dir()
    except UserError as exc:
        pytest.skip(str(exc))
    tiny_checkpoint = save_checkpoint(tmp_path / "long", max_positions=2048)  # room for a choice
    code, so, err = _run_cli(["eval", "dense", "--model", str(tiny_checkpoint), "--tokens", "32", "--seqlen",
                              "16", "--tasks", "piqa,arc_easy", "--limit", "4", "--json"], capsys)
    assert code == 0, err
    res = json.loads(so)
    assert set(res["tasks"]) == {"piqa", "arc_easy"} and res["tasks"]["piqa"]["n"] == 4
    assert res["zero_shot_average"] == pytest.approx((res["tasks"]["piqa"]["acc"] +
                                                       res["tasks"]["arc_easy"]["acc"]) / 2)
    code, so, err = _run_cli(["compare", "--model", str(tiny_checkpoint), "--ratios", "0.5", "--methods",
                              "wanda", "--calib-tokens", "32", "--seqlen", "16", "--tokens", "32",
                              "--work-dir", str(tmp_path / "w"), "--no-progress", "--tasks", "piqa",
                              "--limit", "4"], capsys)
    assert code == 0, err
    assert "zero-shot avg (acc)" in so and "first 4 documents" in so
    rows = json.loads((tmp_path / "w" / "results.json").read_text())["rows"]
    assert all(0 <= r["zero_shot_average"] <= 1 for r in rows) and len(rows) == 2


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


def test_cli_positions_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["compress", "--positions", "csr", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "invalid choice: 'csr'" in capsys.readouterr().err


def test_cli_eval_zero_shot_alone(tmp_path, capsys):
    """--tokens 0 skips the perplexity: zero-shot only."""
    pytest.importorskip("lm_eval")
    from slabopt.llm.zeroshot import data_dir

    try:
        data_dir()
    except UserError as exc:
        pytest.skip(str(exc))
    ckpt = save_checkpoint(tmp_path / "long", max_positions=2048)
    code, so, err = _run_cli(["eval", "dense", "--model", str(ckpt), "--tokens", "0", "--tasks", "piqa",
                              "--limit", "2", "--json"], capsys)
    assert code == 0, err
    res = json.loads(so)
    assert "perplexity" not in res and res["tasks"]["piqa"]["n"] == 2


def test_cli_eval_tokens_zero_needs_tasks(tmp_path, capsys):
    code, _, err = _run_cli(["eval", "dense", "--tokens", "0"], capsys)
    assert code == 2 and "--tasks" in err and "Traceback" not in err


def test_cli_eval_of_a_plain_checkpoint_points_to_eval_dense(tiny_checkpoint, tmp_path, capsys):
    code, _, err = _run_cli(["eval", str(tiny_checkpoint)], capsys)
    assert code == 2 and f"slabopt eval dense --model {tiny_checkpoint}" in err
