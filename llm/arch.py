"""Where a causal language model keeps its decoder blocks and the linear layers inside them."""

from __future__ import annotations

from torch import nn

from .errors import UserError
from .slablinear import SLaBLinear


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UserError("model has no model.layers decoder stack; only Llama-like models are supported")
    return layers


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Linear layers of a block in forward order (nn.Linear or already-compressed SLaBLinear)."""
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear | SLaBLinear)}


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` of ``root`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def block_prefix(model: nn.Module, block_index: int) -> str:
    """State-dict prefix of decoder block ``block_index`` (e.g. ``"model.layers.3."``)."""
    target = decoder_layers(model)[block_index]
    for name, mod in model.named_modules():
        if mod is target:
            return name + "."
    raise UserError(f"decoder block {block_index} is not a submodule of the model")  # pragma: no cover
