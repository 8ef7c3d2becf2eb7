"""Perplexity over non-overlapping windows of the test split (docs/formulation.md §7)."""

from __future__ import annotations

import math

import torch

from . import console
from .data import UserError


@torch.no_grad()
def perplexity(model, test_ids: torch.Tensor, tokens: int = 8192, seqlen: int = 1024,
               batch: int = 1, progress: bool = False, bos: int | None = None) -> dict:
    """exp(mean next-token NLL) over the first ⌊tokens/seqlen⌋ windows of ``seqlen`` tokens.

    Each window is scored independently (no context carried over); the first token of each window
    has no prediction, so a window contributes seqlen − 1 predictions. With ``bos`` (models whose
    tokenizer adds it), a window is BOS followed by seqlen − 1 consecutive test tokens.
    """
    if seqlen < 2:
        raise UserError(f"seqlen must be >= 2, got {seqlen}")
    n_win = tokens // seqlen
    if n_win < 1:
        raise UserError(f"--tokens {tokens} is smaller than one window of seqlen {seqlen}")
    take = seqlen - (bos is not None)
    if n_win * take > test_ids.numel():
        raise UserError(f"the test split has {test_ids.numel()} tokens; {n_win} windows of {seqlen} "
                        "do not fit")
    wins = test_ids[: n_win * take].view(n_win, take)
    if bos is not None:
        wins = torch.cat([torch.full((n_win, 1), bos, dtype=wins.dtype, device=wins.device), wins], dim=1)
    nll, count = 0.0, 0
    with console.progress_bar(range(0, n_win, batch), desc="eval", unit="batch", leave=False,
                              enabled=progress) as it:
        for i in it:
            x = wins[i:i + batch].to(model.device)
            logits = model(input_ids=x, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            nll += float(loss)
            count += x[:, 1:].numel()
    return {"perplexity": math.exp(nll / count), "nll": nll / count, "windows": n_win,
            "seqlen": seqlen, "tokens": n_win * take, "predictions": count, "bos": bos is not None}


def uncache_weights(model: torch.nn.Module) -> int:
    """Make every compressed layer of ``model`` compute its forward without a kept dense Ŵ, and drop
    any Ŵ kept so far; return how many layers were compressed.

    A scoring pass (perplexity, zero-shot) then holds at most one layer's Ŵ at a time: with numba,
    windows of many tokens take the blocked prefill path (Ŵ rebuilt 4 MiB of rows at a time, each
    block used in one matmul and dropped, ``SLaBLinear.blocked_forward``), a few tokens the fused
    kernel; without it the reference rebuilds the layer's Ŵ in the model's dtype for the call. A
    kept float32 Ŵ per layer (``set_cache_weight(True)``) would cost the whole model again in
    float32, and its rebuild was slower than the blocked path.
    """
    from .slablinear import SLaBLinear

    layers = [mod for mod in model.modules() if isinstance(mod, SLaBLinear)]
    for mod in layers:
        mod.set_cache_weight(False)
    return len(layers)


def evaluate_model(model, tok, path, tokens: int, seqlen: int, progress: bool = False,
                   eval_file: str | None = None) -> dict:
    """Perplexity of ``model`` on the shipped test split (tokenised by ``tok``, cached by ``path``)
    or on the text of ``eval_file`` (.txt or .jsonl), from its start; ``text`` names which."""
    from . import data

    uncache_weights(model)
    if eval_file is None:
        test, text = data.token_splits(tok, path)[1], data.TEST_TEXT
    else:
        test, text = data.user_tokens(tok, eval_file), data.describe_text_file(eval_file)
    res = perplexity(model, test, tokens, seqlen, progress=progress, bos=data.bos_token(tok))
    return {**res, "text": text}


def load_target(target: str, model: str | None, dtype: str, device, verify: bool = True):
    """(model, tokenizer, path, info) for ``target``: "dense" (the ``model`` checkpoint) or a folder
    written by ``slabopt compress``, in ``dtype`` on ``device``."""
    from pathlib import Path

    from .data import DEFAULT_MODEL_NAME, load_model
    from .loading import load_compressed, saved_tokenizer

    if target == "dense":
        net, tok, path = load_model(model, dtype)
        return net.to(device), tok, path, {"model": model or DEFAULT_MODEL_NAME, "method": "dense",
                                           "model_path": str(path)}
    path = Path(target)
    if not path.exists():
        raise UserError(f"{path} does not exist (give a folder written by `slabopt compress`, or 'dense')")
    if not (path / "manifest.json").exists() and (path / "config.json").is_file():
        raise UserError(f"{path} is a plain Hugging Face checkpoint (e.g. one `slabopt export` wrote), not a "
                        f"folder of `slabopt compress`; evaluate it with `slabopt eval dense --model {path}`")
    net, man = load_compressed(path, getattr(torch, dtype), verify=verify, device=device)
    tok = saved_tokenizer(path)
    st = man["settings"]
    info = {"model": man.get("source", {}).get("model"), "method": st.get("method"),
            "ratio": st.get("ratio"), "rank": st.get("rank"), "seed": st.get("seed"),
            "calib_tokens": st.get("calib_tokens"), "calib_seqlen": st.get("seqlen"),
            "sizes": man.get("sizes"), "folder": str(path)}
    return net, tok, path, info
