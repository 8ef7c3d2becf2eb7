"""Any Hugging Face decoder architecture: tiny random models of each family, offline.

For Llama (tied and untied), Mistral, Qwen2, Qwen3, Gemma2, Gemma3 (text) and Phi3: the blocks'
captured call arguments reproduce the real forward with sequences longer than the sliding window;
compress → save → load gives the logits (and greedy generations) of a dense model built from the
reconstructed weights; resume writes the same bytes.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from slabopt.llm.arch import block_linears, capture_calls, decoder_layers, set_module  # noqa: E402
from slabopt.llm.loading import load_compressed  # noqa: E402
from slabopt.llm.pipeline import compress_model  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

from ._llm import folder_bytes, windows  # noqa: E402

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
WINDOW = 4  # sliding window, shorter than the 12-token calibration windows


def _config(family: str):
    t = transformers
    if family == "llama_tied":
        return t.LlamaConfig(**SMALL, tie_word_embeddings=True)
    if family == "llama_untied":
        return t.LlamaConfig(**SMALL, tie_word_embeddings=False)
    if family == "mistral":
        return t.MistralConfig(**SMALL, sliding_window=WINDOW)
    if family == "qwen2":  # biases on q/k/v; sliding window on the layers after the first
        return t.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if family == "qwen3":
        return t.Qwen3Config(**SMALL)
    if family == "gemma2":
        return t.Gemma2Config(**SMALL, sliding_window=WINDOW)
    if family == "gemma3":
        return t.Gemma3TextConfig(**SMALL, sliding_window=WINDOW,
                                  layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        small = {k: v for k, v in SMALL.items() if k != "head_dim"}
        return t.Phi3Config(**small, pad_token_id=0)
    raise AssertionError(family)


FAMILIES = ["llama_tied", "llama_untied", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]


def _model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = _config(family)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def _dense_from(compressed, reference):
    """``reference`` with each compressed layer replaced by a dense nn.Linear of its Ŵ."""
    dense = copy.deepcopy(reference)
    for cb, db in zip(decoder_layers(compressed), decoder_layers(dense), strict=True):
        for name, mod in cb.named_modules():
            if isinstance(mod, SLaBLinear):
                lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
                lin.weight.data = mod.reconstruct(torch.float32)
                if mod.bias is not None:
                    lin.bias.data = mod.bias.float()
                set_module(db, name, lin)
    return dense


@pytest.mark.parametrize("family", FAMILIES)
def test_captured_calls_reproduce_the_forward_beyond_the_sliding_window(family):
    model = _model(family)
    x = windows(n=2, seqlen=12)
    layers = decoder_layers(model)
    outs: dict[int, list] = {b: [] for b in range(len(layers))}
    hooks = [blk.register_forward_hook(lambda _m, _a, o, b=b: outs[b].append(o[0] if isinstance(o, tuple)
                                                                               else o))
             for b, blk in enumerate(layers)]
    with torch.no_grad():
        for i in range(2):
            model(input_ids=x[i:i + 1], use_cache=False)
    for h in hooks:
        h.remove()
    inputs, calls = capture_calls(model, x)
    hs = inputs
    with torch.no_grad():
        for b, blk in enumerate(layers):
            hs = [blk(h, *args, **kw) for h, (args, kw) in zip(hs, calls[b], strict=True)]
            hs = [h[0] if isinstance(h, tuple) else h for h in hs]
            for i in range(2):
                torch.testing.assert_close(hs[i], outs[b][i], rtol=0, atol=0)


def test_sliding_and_global_blocks_get_their_own_arguments():
    model = _model("gemma3")
    _, calls = capture_calls(model, windows(n=1, seqlen=12))
    sliding, full = calls[0][0][1], calls[1][0][1]
    a, b = sliding["attention_mask"], full["attention_mask"]
    assert a is not None and (b is None or not torch.equal(a, b))
    assert not all(torch.equal(a, b) for a, b in zip(sliding["position_embeddings"],
                                                     full["position_embeddings"], strict=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_compress_save_load_equals_the_reconstructed_dense_model(tmp_path, family):
    model = _model(family)
    reference = copy.deepcopy(model)
    man = compress_model(model, windows(n=3, seqlen=12), tmp_path / "o", method="slab", ratio=0.5, rank=1,
                         max_iter=2, progress=False, log=None)
    expected = sum(len(block_linears(b)) for b in decoder_layers(reference))
    assert len(man["layers"]) == expected and man["architecture"] == model.config.model_type
    loaded, _ = load_compressed(tmp_path / "o")
    assert type(loaded) is type(model)
    dense = _dense_from(loaded, reference)
    x = windows(n=2, seqlen=12, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, dense(input_ids=x).logits, rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=0)
        prompt = x[:1, :5]
        a = loaded.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
        b = dense.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert a.shape == (1, 11) and torch.equal(a, b)


@pytest.mark.parametrize("family", ["gemma3", "phi3", "qwen2"])
def test_resume_writes_the_same_bytes(tmp_path, family):
    kw = dict(method="slab", ratio=0.5, rank=1, max_iter=2, progress=False, log=None)
    compress_model(_model(family), windows(n=3, seqlen=12), tmp_path / "full", **kw)

    def stop(b):
        if b == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_model(_model(family), windows(n=3, seqlen=12), tmp_path / "part", on_block_done=stop, **kw)
    compress_model(_model(family), windows(n=3, seqlen=12), tmp_path / "part", resume=True, **kw)
    assert folder_bytes(tmp_path / "part") == folder_bytes(tmp_path / "full")


def test_targets_and_ignore_choose_the_layers(tmp_path):
    model = _model("llama_untied")
    man = compress_model(model, windows(n=2, seqlen=12), tmp_path / "o", method="wanda", ratio=0.5, rank=0,
                         targets=r"\.mlp\.", ignore=r"down_proj$", progress=False, log=None)
    assert {e["name"] for e in man["layers"]} == {"mlp.gate_proj", "mlp.up_proj"}
    loaded, _ = load_compressed(tmp_path / "o")
    for block in decoder_layers(loaded):
        assert isinstance(block.mlp.down_proj, torch.nn.Linear)
        assert isinstance(block.self_attn.q_proj, torch.nn.Linear)
        assert isinstance(block.mlp.up_proj, SLaBLinear)
    x = windows(n=1, seqlen=12, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=0)


def test_moe_routers_are_left_dense(tmp_path):
    cfg = transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    routers = [n for n, m in decoder_layers(model)[0].named_modules()
               if isinstance(m, torch.nn.Linear) and m.out_features == 4]
    names = set(block_linears(decoder_layers(model)[0], "model.layers.0."))
    assert not set(routers) & names


# ------------------------------------------------------------------ device, dtype, tokenisation
def _checkpoint(tmp_path, family: str):
    """A saved tiny model of ``family`` with the character-level tokenizer of tests/_llm.py."""
    import shutil

    from ._llm import save_checkpoint

    src = save_checkpoint(tmp_path / "tok")
    d = tmp_path / family
    _model(family).save_pretrained(d)
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, d / f.name)
    return d


def _cli(argv, capsys):
    from slabopt.llm import cli

    code = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cli_gemma3_compresses_and_evaluates_sanely(tmp_path, capsys, dtype):
    import json

    d = _checkpoint(tmp_path, "gemma3")
    out = tmp_path / "out"
    code, so, err = _cli(["compress", "--model", d, "--dtype", dtype, "--device", "auto", "--calib-tokens",
                          "48", "--seqlen", "16", "--max-iter", "2", "--out", out], capsys)
    assert code == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["architecture"] == "gemma3_text" and man["settings"]["model_dtype"] == dtype
    assert len(man["layers"]) == 3 * 7
    code, so, err = _cli(["eval", out, "--tokens", "64", "--seqlen", "16", "--json", "--dtype", dtype],
                         capsys)
    assert code == 0, err
    ppl = json.loads(so)["perplexity"]
    dense = json.loads(_cli(["eval", "dense", "--model", d, "--tokens", "64", "--seqlen", "16", "--json"],
                            capsys)[1])["perplexity"]
    assert 1 < ppl < 3 * dense < 3 * 96  # a random 96-token model: near uniform, and not broken


def test_cli_device_that_is_not_there(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    d = _checkpoint(tmp_path, "llama_tied")
    code, _, err = _cli(["compress", "--model", d, "--device", "cuda", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "not available" in err and "Traceback" not in err
    code, _, err = _cli(["eval", "dense", "--model", d, "--device", "tpu"], capsys)
    assert code == 2 and "allowed: cpu, cuda" in err


def test_bos_convention_of_the_tokenizer():
    from slabopt.llm.data import bos_token, calibration_windows
    from slabopt.llm.evaluate import perplexity

    class Tok:
        def __init__(self, adds):
            self.bos_token_id, self.adds = 2, adds

        def __call__(self, text):
            return {"input_ids": ([2] if self.adds else []) + [7]}

    assert bos_token(Tok(True)) == 2 and bos_token(Tok(False)) is None
    ids = torch.arange(10, 200)
    w = calibration_windows(ids, 64, 16, seed=0, bos=2)
    assert w.shape == (4, 16) and bool((w[:, 0] == 2).all()) and bool((w[:, 1:] >= 10).all())
    assert torch.equal(calibration_windows(ids, 64, 16, seed=0)[:, 0] >= 10, torch.ones(4, dtype=torch.bool))
    seen = []

    class Probe(torch.nn.Module):
        device = torch.device("cpu")

        def forward(self, input_ids, use_cache):
            seen.append(input_ids)
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 256)})()

    res = perplexity(Probe(), ids, tokens=32, seqlen=16, bos=2)
    assert res["bos"] and res["predictions"] == 2 * 15 and bool((seen[0][:, 0] == 2).all())
    assert torch.equal(seen[0][0, 1:], ids[:15]) and torch.equal(seen[1][0, 1:], ids[15:30])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", ["llama_tied", "gemma3"])
def test_cuda_compression_matches_cpu(tmp_path, family):
    kw = dict(method="slab", ratio=0.5, rank=1, max_iter=2, progress=False, log=None)
    cpu = _model(family)
    compress_model(cpu, windows(n=3, seqlen=12), tmp_path / "cpu", **kw)
    gpu = _model(family)
    compress_model(gpu, windows(n=3, seqlen=12), tmp_path / "gpu", device="cuda", **kw)
    assert next(gpu.parameters()).device.type == "cpu"  # the model stays on the CPU
    a, _ = load_compressed(tmp_path / "cpu")
    b, _ = load_compressed(tmp_path / "gpu", device="cuda")
    x = windows(n=1, seqlen=12, seed=4)
    with torch.no_grad():
        la, lb = a(input_ids=x).logits, b(input_ids=x.cuda()).logits.cpu()
    assert float((la - lb).norm() / la.norm()) < 5e-2


# ------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("family", ["llama_tied", "gemma3", "qwen2"])
def test_export_loads_without_slabopt_classes_and_gives_the_same_logits(tmp_path, capsys, family):
    d = _checkpoint(tmp_path, family)
    out = tmp_path / "c"
    code, _, err = _cli(["compress", "--model", d, "--calib-tokens", "48", "--seqlen", "16", "--max-iter",
                         "2", "--out", out], capsys)
    assert code == 0, err
    code, so, err = _cli(["export", out, "--out", tmp_path / "hf"], capsys)
    assert code == 0, err
    assert "from_pretrained" in so
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    assert "quantization_config" not in (tmp_path / "hf" / "config.json").read_text()  # a plain model
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not any(isinstance(m, SLaBLinear) for m in plain.modules())
    loaded, _ = load_compressed(out)
    x = windows(n=2, seqlen=12, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=x).logits, loaded(input_ids=x).logits, rtol=1e-5,
                                   atol=1e-5)
    code, _, err = _cli(["export", out, "--out", tmp_path / "bf", "--dtype", "bfloat16"], capsys)
    assert code == 0, err
    bf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf")
    assert next(bf.parameters()).dtype == torch.bfloat16


def test_export_never_replaces_anything(tmp_path, capsys):
    d = _checkpoint(tmp_path, "llama_tied")
    out = tmp_path / "c"
    assert _cli(["compress", "--model", d, "--calib-tokens", "32", "--seqlen", "16", "--max-iter", "2",
                 "--out", out], capsys)[0] == 0
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    code, _, err = _cli(["export", out, "--out", taken], capsys)
    assert code == 2 and "never replaces" in err and (taken / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
