"""Hugging Face decoder-model pipeline of slabopt, installed as ``slabopt.llm``.

    from slabopt.llm import load
    model, tokenizer = load("runs/b25")      # a folder written by ``slabopt compress``

``load_compressed`` (model and manifest, with its options) is importable from here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load", "load_compressed"]


def load(folder: str | Path, dtype: Any = None, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of a folder written by ``slabopt compress``: the model as
    :func:`load_compressed` gives it (every file verified, packed layers, fused forward; ``dtype``
    a torch dtype, default float32) and the tokenizer saved with it."""
    import torch

    from .checkpoint import load_compressed as _load
    from .checkpoint import saved_tokenizer

    model, _ = _load(folder, torch.float32 if dtype is None else dtype, device=device)
    return model, saved_tokenizer(folder)


def __getattr__(name: str) -> Any:
    if name == "load_compressed":  # imported on use: ``import slabopt.llm`` stays light
        from .checkpoint import load_compressed

        return load_compressed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
