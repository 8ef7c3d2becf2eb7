"""The calibration loop: the windows run through one decoder block, and what its linear layers see.

Each block is run window by window on the hidden states that enter it (the outputs of the blocks
before it) with the other arguments recorded for it by :func:`.arch.capture_calls` (attention
mask, rotary tables, cache position). :func:`forward` is that loop; :func:`block_outputs` keeps
the outputs (the next block's inputs, or the dense targets of :mod:`.refine`) and
:func:`collect_stats` sums, per linear layer, the statistics of its input that the solvers take:
Σx² per column (the column norms d) and, for solvers registered with ``needs_gram``, XᵀX.
The compression pipeline, OWL's dense pass (:mod:`.allocation`) and the refinement all run
blocks through these functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .arch import map_tensors


@dataclass(frozen=True)
class BlockInputs:
    """What one decoder block is run on: each window's hidden states entering it, the other
    arguments of its call for that window (``(args, kwargs)``), and the device it runs on."""

    hidden: list[torch.Tensor]
    calls: list[tuple[tuple, dict]]
    device: torch.device

    def part(self, windows: slice) -> BlockInputs:
        """The same inputs for a contiguous share of the windows."""
        return BlockInputs(self.hidden[windows], self.calls[windows], self.device)


def _hidden_states(out) -> torch.Tensor:
    """The hidden states a decoder block returns (alone, or first of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def forward(block: nn.Module, inputs: BlockInputs) -> Iterator[torch.Tensor]:
    """The block's output for each window in turn, on ``inputs.device`` (in the caller's grad mode)."""
    for hs, (args, kwargs) in zip(inputs.hidden, inputs.calls, strict=True):
        args, kwargs = map_tensors((args, kwargs), lambda t: t.to(inputs.device))
        yield _hidden_states(block(hs.to(inputs.device), *args, **kwargs))


@torch.no_grad()
def block_outputs(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """The block's output for each window, kept on the CPU."""
    return [out.detach().to("cpu") for out in forward(block, inputs)]


class _Sums:
    """Forward pre-hooks that add up Σx² per column (and XᵀX) of each linear layer's input.

    Layers fed the very same tensor within a window (q/k/v, gate/up) share one accumulator, kept
    under the name of the first of them (``owner``); sums are in float64 on the input's device.
    """

    def __init__(self, need_gram: bool):
        self.need_gram = need_gram
        self.acc: dict[str, dict] = {}
        self.owner: dict[str, str] = {}
        self.seen: dict[int, tuple] = {}  # id → (owner, tensor); holding the tensor keeps its id unique

    def new_window(self, _block, _args) -> None:
        """Pre-hook of the block: a new window starts, its tensors are new."""
        self.seen.clear()

    def hook(self, name: str):
        """The pre-hook of the linear layer ``name``."""
        return lambda _mod, args: self.add(name, args[0])

    def add(self, name: str, x: torch.Tensor) -> None:
        """Count the input ``x`` of layer ``name``, unless an earlier layer counted the same tensor."""
        key = self.seen.get(id(x), (None,))[0]
        if key is None:
            self.seen[id(x)] = (name, x)
            key = name
            self._accumulate(name, x)
        self.owner[name] = key

    def _accumulate(self, name: str, x: torch.Tensor) -> None:
        """Add x's Σx² per column (and XᵀX) to the accumulator of ``name``."""
        xf = x.reshape(-1, x.shape[-1]).to(torch.float64)
        a = self.acc.setdefault(name, {"sq": torch.zeros(xf.shape[1], dtype=torch.float64, device=xf.device)})
        a["sq"] += (xf * xf).sum(0)
        if self.need_gram:
            a["gram"] = a.get("gram", 0) + xf.T @ xf


@contextmanager
def _hooked(block: nn.Module, lin: dict[str, nn.Module], sums: _Sums) -> Iterator[None]:
    """``sums``' hooks on ``block`` and its layers ``lin`` while the context lasts."""
    handles = [block.register_forward_pre_hook(sums.new_window)]
    handles += [m.register_forward_pre_hook(sums.hook(n)) for n, m in lin.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect_stats(block: nn.Module, inputs: BlockInputs, lin: dict[str, nn.Module],
                  need_gram: bool) -> tuple[dict[str, dict], dict[str, str]]:
    """Per-linear input statistics over all the windows: ``({name: {"sq": Σx² per column, "gram":
    XᵀX when need_gram}}, {name: the layer whose accumulator it shares}``); float64 on the device.
    """
    sums = _Sums(need_gram)
    with _hooked(block, lin, sums):
        for out in forward(block, inputs):
            del out  # only the sums are wanted
    return {n: sums.acc[sums.owner[n]] for n in lin}, sums.owner
