"""``slabopt export``: a compressed folder as a plain Hugging Face checkpoint of dense weights.

Every compressed linear layer becomes an ``nn.Linear`` holding its reconstructed Ŵ (and bias), and
the model is saved with ``save_pretrained`` plus the tokenizer, so
``AutoModelForCausalLM.from_pretrained(DIR)`` loads it without slabopt -- the way to take a
compressed model into lm-eval, vLLM or one's own code. The export is as large as the dense model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .arch import decoder_layers, set_module
from .errors import UserError
from .loading import load_compressed
from .slablinear import SLaBLinear


def densify(model: nn.Module) -> nn.Module:
    """Replace every :class:`SLaBLinear` in the decoder blocks by an ``nn.Linear`` of its Ŵ; the
    model is then a plain one (no slabopt quantizer, no ``quantization_config`` to save)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for block in decoder_layers(model):
        for name, mod in list(block.named_modules()):
            if isinstance(mod, SLaBLinear):
                lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
                lin.weight.data = mod.reconstruct(torch.float32)
                if mod.bias is not None:
                    lin.bias.data = mod.bias.to(torch.float32)
                set_module(block, name, lin)
    return model


def export_dense(folder: str | Path, out: str | Path, dtype: str = "float32", verify: bool = True) -> Path:
    """Write ``folder`` (from ``slabopt compress``) to the new folder ``out`` as dense weights in
    ``dtype``; ``out`` must not exist or be empty (nothing is ever replaced)."""
    from transformers import AutoTokenizer

    out = Path(out)
    if out.exists() and (not out.is_dir() or out.is_symlink() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; export writes a new folder and never "
                        "replaces anything: choose another --out")
    model, _ = load_compressed(folder, torch.float32, verify=verify)
    densify(model).to(getattr(torch, dtype))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.slabopt-export-{os.getpid()}"
    try:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(folder), local_files_only=True).save_pretrained(tmp)
        os.rename(tmp, out)  # appears complete or not at all; replaces only an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
