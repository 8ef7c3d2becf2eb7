"""Hugging Face decoder-model pipeline of slabopt, installed as ``slabopt.llm``.

    from slabopt.llm import load
    model, tokenizer = load("runs/b25")      # a folder written by ``slabopt compress``

or, the same model, through transformers (slabopt registers its format there, see
:mod:`.hf_integration`)::

    import slabopt.llm
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("runs/b25")

``load_compressed`` (model and manifest, with its options) and ``add_transformers_config`` (for a
folder written before its config.json told transformers how to load it) are importable from here too.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_transformers_config", "load", "load_compressed"]


def load(folder: str | Path, dtype: Any = None, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of a folder written by ``slabopt compress``: the model as
    :func:`load_compressed` gives it (every file verified, packed layers, fused forward; ``dtype``
    a torch dtype, default float32) and the tokenizer saved with it."""
    import torch

    from .loading import load_compressed as _load
    from .loading import saved_tokenizer

    model, _ = _load(folder, torch.float32 if dtype is None else dtype, device=device)
    return model, saved_tokenizer(folder)


def __getattr__(name: str) -> Any:
    if name == "load_compressed":  # imported on use: ``import slabopt.llm`` stays light
        from .loading import load_compressed

        return load_compressed
    if name == "add_transformers_config":
        from .hf_integration import add_transformers_config

        return add_transformers_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------- registration with transformers
_HOOKED = "transformers.modeling_utils"  # where from_pretrained lives; it imports the quantizer registry


def _register() -> None:
    from .hf_integration import register

    register()


class _RegisterAfter(importlib.abc.Loader):
    """The loader of ``transformers.modeling_utils``, registering slabopt once the module is loaded;
    anything else is the original loader's."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        try:
            _register()
        except Exception as exc:  # never break transformers itself
            import warnings

            warnings.warn(f"slabopt could not register its format with transformers: {exc!r}", stacklevel=2)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``transformers.modeling_utils`` with the other finders and wraps its loader in
    :class:`_RegisterAfter`; then takes itself off ``sys.meta_path``."""

    def find_spec(self, name, path, target=None):
        if name != _HOOKED:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfter(spec.loader)
                return spec
        return None


def _register_with_transformers() -> None:
    """Register slabopt with transformers now if its model code is loaded, else right after it is
    (importing transformers here would cost every ``slabopt`` command seconds)."""
    if _HOOKED in sys.modules:
        _register()
    elif importlib.util.find_spec("transformers") is not None and not any(
            isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


_register_with_transformers()
