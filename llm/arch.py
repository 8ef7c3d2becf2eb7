"""Where a causal language model keeps its decoder blocks, which linear layers to compress, and
what each block is called with -- found structurally, for any Hugging Face decoder model.

- The decoder stack is the longest ``nn.ModuleList`` whose children are all of the model's
  ``_no_split_modules`` classes (the decoder-layer class, as accelerate and llm-compressor find it),
  else ``model.get_decoder().layers``.
- The layers to compress are the ``nn.Linear`` modules inside the blocks whose full name matches
  ``targets`` and not ``ignore`` (regular expressions, ``re.search``); by default every linear layer
  except mixture-of-experts routers.
- Each block's positional and keyword arguments (attention mask, rotary position embeddings, cache
  position) are recorded *per block* while the model runs once with every block replaced by a
  pass-through recorder: models with sliding-window and global layers (Gemma 2/3, Qwen
  ``layer_types``) give different masks and rotary tables to different blocks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .slablinear import SLaBLinear

DEFAULT_IGNORE = r"(^|\.)(gate|router|shared_expert_gate)$"  # mixture-of-experts routers


def _no_split_classes(model: nn.Module) -> set[str]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    for mod in model.modules():
        names |= set(getattr(mod, "_no_split_modules", None) or [])
    return names


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks of ``model``; ``UserError`` when it has none."""
    classes = _no_split_classes(model)
    best = None
    for mod in model.modules():
        if (isinstance(mod, nn.ModuleList) and len(mod) > 1 and
                all(type(c).__name__ in classes for c in mod) and (best is None or len(mod) > len(best))):
            best = mod
    if best is None and hasattr(model, "get_decoder"):
        layers = getattr(model.get_decoder(), "layers", None)
        best = layers if isinstance(layers, nn.ModuleList) and len(layers) > 0 else None
    if best is None:
        raise UserError(f"{type(model).__name__} has no stack of repeated decoder blocks; slabopt "
                        "compresses decoder-only causal language models")
    return best


def is_target(name: str, targets: str | None, ignore: str | None) -> bool:
    """Whether the linear layer with full name ``name`` is compressed."""
    return (targets is None or re.search(targets, name) is not None) and (
        ignore is None or re.search(ignore, name) is None)


def block_linears(block: nn.Module, prefix: str = "", targets: str | None = None,
                  ignore: str | None = DEFAULT_IGNORE) -> dict[str, nn.Module]:
    """Linear layers of a block in forward order, by name inside the block.

    Already-compressed :class:`SLaBLinear` layers are always included; ``nn.Linear`` layers when
    ``prefix + name`` passes :func:`is_target`.
    """
    return {n: m for n, m in block.named_modules()
            if isinstance(m, SLaBLinear) or (isinstance(m, nn.Linear) and is_target(prefix + n, targets,
                                                                                   ignore))}


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` of ``root`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def block_prefix(model: nn.Module, block_index: int) -> str:
    """Full-name prefix of decoder block ``block_index`` (e.g. ``"model.layers.3."``)."""
    target = decoder_layers(model)[block_index]
    for name, mod in model.named_modules():
        if mod is target:
            return name + "."
    raise UserError(f"decoder block {block_index} is not a submodule of the model")  # pragma: no cover


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor inside tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple | list):
        return type(obj)(map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    return obj


class _Stop(Exception):
    pass


class _Recorder(nn.Module):
    """Stands in for a decoder block: records its call and passes the hidden states through."""

    def __init__(self, block: nn.Module, index: int, calls: list, last: bool):
        super().__init__()
        self.block, self.index, self.calls, self.last = block, index, calls, last

    def __getattr__(self, name: str):  # the model may read block attributes (e.g. attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("block"), name)

    def forward(self, hidden_states, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
        kwargs["use_cache"] = False
        self.calls.append((self.index, hidden_states.detach(), args, kwargs))
        if self.last:
            raise _Stop
        return hidden_states


@torch.no_grad()
def capture_calls(model: nn.Module, windows: torch.Tensor, batch: int = 1):
    """Run ``windows`` through the model with every block replaced by a recorder.

    Returns ``(inputs, calls)``: ``inputs[i]`` are the hidden states entering block 0 for batch i,
    and ``calls[b][i] = (args, kwargs)`` are the other arguments block b gets for batch i.
    """
    layers = decoder_layers(model)
    records: list = []
    originals = list(layers)
    for b, block in enumerate(originals):
        layers[b] = _Recorder(block, b, records, last=b == len(originals) - 1)
    try:
        for i in range(0, windows.shape[0], batch):
            try:
                model(input_ids=windows[i:i + batch], use_cache=False)
            except _Stop:
                pass
    finally:
        for b, block in enumerate(originals):
            layers[b] = block
    inputs = [hs.clone() for idx, hs, _, _ in records if idx == 0]
    calls = [[(args, kw) for idx, _, args, kw in records if idx == b] for b in range(len(originals))]
    return inputs, calls
