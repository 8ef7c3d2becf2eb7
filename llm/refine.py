"""Block-level refinement of the compressed layers (after 3BASiL's transformer matching).

After a block's linear layers are replaced by :class:`.SLaBLinear`, the real-valued parts they
store are tuned by Adam on the block's output error over the calibration windows,

    loss(θ) = Σ_w ‖block_θ(x_w) − y_w‖_F² / Σ_w ‖y_w‖_F²,

where y_w is the dense block's output for the same input x_w. Tuned: U and V, the kept values of S
(or, when they are integer codes, their row scales), the per-row offset and two-level codes when
stored. Fixed: every discrete part (bitmask or N:M codes, signs, integer codes), so the bits stored
are exactly those the budget counted. Each step runs the windows forward and backward once; the
parameters of least loss seen (the start included) are kept, so the refinement never raises the
loss on the calibration windows. Tuning is in float32 copies; the result is cast back to the
stored dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from .calibration import BlockInputs, forward
from .slablinear import SLaBLinear

TUNED = ("U", "V", "values", "value_scales", "row_offset", "levels")
DEFAULT_LR = 1e-4


def tunable_buffers(mod: SLaBLinear) -> list[str]:
    """Names of the real-valued buffers of ``mod`` that the refinement tunes."""
    return [n for n in TUNED
            if getattr(mod, n, None) is not None and getattr(mod, n).is_floating_point()]


def _block_loss(block: nn.Module, inputs: BlockInputs, targets: list, backward: bool) -> float:
    """Σ_w ‖block(x_w) − y_w‖² / Σ_w ‖y_w‖², with gradients accumulated when ``backward``."""
    norm = sum(float(t.double().pow(2).sum()) for t in targets)
    total = 0.0
    with torch.set_grad_enabled(backward):
        for out, y in zip(forward(block, inputs), targets, strict=True):
            loss = (out.float() - y.to(inputs.device).float()).pow(2).sum() / norm
            if backward:
                loss.backward()
            total += float(loss.detach())
    return total


class _Best:
    """The least loss seen so far and a copy of the parameters that gave it."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.loss: float | None = None
        self.kept = [p.detach() for p in params]  # what goes back if the tuning fails before a loss

    def offer(self, loss: float) -> None:
        """Keep the current parameters when ``loss`` (theirs) is below the best so far."""
        if self.loss is None or loss < self.loss:
            self.loss, self.kept = loss, [p.detach().clone() for p in self.params]


def _float32_masters(layers: list[SLaBLinear]) -> tuple[list[torch.Tensor], dict]:
    """Put a float32 copy that takes gradients in place of each tunable buffer (the layers' forward
    switched to the torch reference path); returns the copies and the buffers' own dtypes."""
    dtypes, params = {}, []
    for mod in layers:
        mod.set_cache_weight(False)
        mod.use_fused = False  # the torch reference forward, which gradients flow through
        for name in tunable_buffers(mod):
            buf = getattr(mod, name)
            dtypes[(id(mod), name)] = buf.dtype
            master = buf.detach().to(torch.float32).clone().requires_grad_(True)
            mod._buffers[name] = master
            params.append(master)
    return params, dtypes


def _put_back(layers: list[SLaBLinear], kept: list[torch.Tensor], dtypes: dict) -> None:
    """Store ``kept`` (in the order of :func:`_float32_masters`) in the layers' buffers, cast back."""
    it = iter(kept)
    for mod in layers:
        for name in tunable_buffers(mod):
            mod._buffers[name] = next(it).to(dtypes[(id(mod), name)])
        mod.use_fused = True
        mod._drop_derived()


@contextmanager
def _frozen(block: nn.Module) -> Iterator[None]:
    """The block's trainable parameters (norms, uncompressed layers) take no gradient meanwhile."""
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _tune(loss, best: _Best, steps: int, lr: float) -> float:
    """``steps`` Adam steps on ``loss(backward)`` over ``best.params``, every loss offered to
    ``best`` (the last step's parameters too); returns the starting loss."""
    start = loss(backward=False)
    best.offer(start)
    opt = torch.optim.Adam(best.params, lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        best.offer(loss(backward=True))  # the loss of the parameters before this step
        opt.step()
    best.offer(loss(backward=False))
    return start


def refine_block(block: nn.Module, inputs: BlockInputs, targets: list[torch.Tensor], steps: int,
                 lr: float | None = None) -> dict:
    """Tune the block's SLaBLinear layers for ``steps`` Adam steps of learning rate ``lr`` (default
    ``DEFAULT_LR``; module docstring) towards the dense block's outputs ``targets`` on ``inputs``;
    returns {"loss_start", "loss_end", "steps"} (relative squared output errors on the windows)."""
    layers = [m for m in block.modules() if isinstance(m, SLaBLinear)]
    if not layers or not any(tunable_buffers(m) for m in layers):  # nothing compressed here
        return {"loss_start": None, "loss_end": None, "steps": 0}
    params, dtypes = _float32_masters(layers)
    best = _Best(params)
    try:
        with _frozen(block):
            start = _tune(partial(_block_loss, block, inputs, targets), best, steps,
                          DEFAULT_LR if lr is None else lr)
    finally:
        _put_back(layers, best.kept, dtypes)
    return {"loss_start": start, "loss_end": best.loss, "steps": steps}
