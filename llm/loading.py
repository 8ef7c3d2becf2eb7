"""Loading a finished output folder of ``slabopt compress`` (:mod:`.checkpoint`): the model, with
its packed layers and fused forward, and the tokenizer saved with it; no pickle anywhere."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .arch import decoder_layers
from .checkpoint import (
    CONFIG,
    MANIFEST,
    REST,
    _non_persistent_buffers,
    load_block,
    read_manifest,
    read_tensors,
    transformers_entries,
    verify_files,
)
from .errors import UserError
from .heap import page_out, release_freed_memory
from .slablinear import SLaBLinear


def _empty_model(folder: Path, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        for key in transformers_entries():  # the model in memory is not transformers' to save or load
            if hasattr(config, key):
                delattr(config, key)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{Path(folder) / CONFIG} cannot be read as a model config ({exc})") from None


def _assign_buffers(model: nn.Module, rest: dict[str, torch.Tensor]) -> None:
    """Put the saved non-persistent buffers back (``load_state_dict`` skips them)."""
    for name in _non_persistent_buffers(model):
        if name in rest:
            owner, _, leaf = name.rpartition(".")
            mod = model.get_submodule(owner) if owner else model
            mod.register_buffer(leaf, rest[name], persistent=False)
    for mod in model.modules():  # a copy some rotary modules keep as a plain attribute
        orig = getattr(mod, "original_inv_freq", None)
        if isinstance(orig, torch.Tensor) and orig.is_meta and hasattr(mod, "inv_freq"):
            mod.original_inv_freq = mod.inv_freq.clone()


def saved_tokenizer(folder: str | Path):
    """The tokenizer saved in a folder written by ``compress_model`` (a clear error if it cannot be read)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise UserError(f"cannot load the tokenizer saved in {folder}: {str(exc).splitlines()[0]}") from None


def load_compressed(folder: str | Path, dtype: torch.dtype = torch.float32, *, verify: bool = True,
                    device: str | torch.device = "cpu", fused: bool = True):
    """(model, manifest) from a folder written by ``compress_model``; no pickle anywhere.

    With ``verify`` (default) every file's SHA-256 is checked against the manifest first, and a
    damaged or missing file is named in the error. With ``fused`` (default) the compressed layers
    compute their forward from the packed parts (:mod:`.fused`, where numba is installed and the
    layout allows); ``False`` keeps the torch reference.
    """
    folder = Path(folder)
    man = read_manifest(folder)
    if not man.get("complete"):
        raise UserError(f"{folder} is unfinished (next block {man.get('next_block')}); "
                        "finish it with `slabopt compress ... --resume`")
    if verify:
        verify_files(folder, man)
    model = _empty_model(folder, dtype)
    layers = decoder_layers(model)
    if len(layers) != man.get("num_blocks"):
        raise UserError(f"{folder / MANIFEST} lists {man.get('num_blocks')} blocks but the config has "
                        f"{len(layers)}")
    for b, block in enumerate(layers):
        load_block(block, folder, b, dtype)
    rest, _ = read_tensors(folder / REST)
    persistent = set(model.state_dict())
    # (the others cloned: a tensor left on the file's mapping keeps every page read from it resident)
    rest = {k: v.to(dtype) if k in persistent and v.is_floating_point() else v.clone()
            for k, v in rest.items()}
    try:
        model.load_state_dict(rest, strict=False, assign=True)
    except RuntimeError as exc:
        raise UserError(f"{folder / REST} does not fit the model config: {exc}") from None
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    _assign_buffers(model, rest)
    leftovers = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftovers:
        raise UserError(f"{folder / REST} lacks weights the model needs: {', '.join(leftovers[:5])}")
    model.eval()
    model = model.to(device)
    prepare_layers(model, fused)
    from .hf_integration import attach_quantizer  # (imports transformers' model code)

    attach_quantizer(model)  # save_pretrained then writes a folder from_pretrained reads back
    release_freed_memory()  # the loading's temporaries, kept by glibc's heap otherwise
    return model, man


def prepare_layers(model: nn.Module, fused: bool = True) -> None:
    """Switch every compressed layer of a loaded model to the fused forward (or, ``fused=False``, the
    torch reference) and build the kernel's arrays now."""
    for mod in model.modules():
        if isinstance(mod, SLaBLinear):
            mod.use_fused = fused
            if fused and mod.prepare_fused():  # codes unpacked for the kernel: the packed ones are
                page_out(mod.values)  # read again only to save, reconstruct or for the reference
