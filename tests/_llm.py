"""Tiny offline models and checkpoints shared by the model-pipeline tests (no download)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_model(layers: int = 2, vocab: int = 96, seed: int = 0, max_positions: int = 64):
    """A random LlamaForCausalLM with GQA shapes (hidden 48, 6 heads, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=layers,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                      max_position_embeddings=max_positions, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def windows(vocab: int = 96, n: int = 3, seqlen: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, seqlen), generator=g)


def save_checkpoint(folder: Path, seed: int = 0, layers: int = 2, max_positions: int = 64) -> Path:
    """A tiny Llama checkpoint folder with a character-level WordLevel tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")
    fast.save_pretrained(folder)
    model = tiny_model(layers=layers, vocab=len(vocab), seed=seed, max_positions=max_positions)
    model.save_pretrained(folder)
    return Path(folder)


def quick_compress_args(tmp_path: Path) -> list[str]:
    """``slabopt compress`` arguments for the tiny checkpoint saved under ``tmp_path``: 32
    calibration tokens in windows of 16, one solver iteration (add ``--out`` and the options)."""
    ckpt = save_checkpoint(tmp_path / "ckpt")
    return ["compress", "--model", str(ckpt), "--calib-tokens", "32", "--seqlen", "16", "--max-iter", "1"]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` except the manifest and the log, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "layers.log")}


def parts_abs(mod) -> torch.Tensor:
    """|S| + |U||V|ᵀ + |c|·1ᵀ (+ the larger |level| per row): entrywise ≥ |Ŵ|, the size of the
    numbers a path adds up, whatever the order in which it combines the parts."""
    A = mod.sparse_dense(torch.float64).abs()
    if mod.rank:
        U, V = mod.factors(torch.float64)
        A += U.abs() @ V.abs().T
    if mod.row_offset is not None:
        A += mod.row_offset.double().abs()[:, None]
    if mod.levels is not None:
        A += mod.levels.double().abs().max(0).values[:, None]
    return A


def check_forward(mod, y: torch.Tensor, x: torch.Tensor, rtol: float = 1e-5) -> None:
    """y equals x Ŵᵀ + bias within rtol of |x| Aᵀ + |bias|, A = ``parts_abs(mod)``: the error
    float32 sums can make whatever order a path adds the parts in (a weight that cancels between
    S and L is no smaller for it)."""
    W = mod.reconstruct(torch.float64)
    x64 = x.reshape(-1, mod.in_features).to(torch.float64)
    bias = torch.zeros(mod.out_features, dtype=torch.float64) if mod.bias is None else mod.bias.double()
    ref = x64 @ W.T + bias
    scale = x64.abs() @ parts_abs(mod).T + bias.abs()
    err = (y.reshape(ref.shape).to(torch.float64) - ref).abs()
    assert y.shape[-1] == mod.out_features
    assert bool((err <= rtol * scale + 1e-30).all()), float((err / scale.clamp_min(1e-30)).max())


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the console script ``slabopt`` on ``argv``."""
    from slabopt.llm import cli

    code = cli.main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err
