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

import torch

from .arch import map_tensors
from .slablinear import SLaBLinear

TUNED = ("U", "V", "values", "value_scales", "row_offset", "levels")
DEFAULT_LR = 1e-4


def tunable_buffers(mod: SLaBLinear) -> list[str]:
    """Names of the real-valued buffers of ``mod`` that the refinement tunes."""
    return [n for n in TUNED
            if getattr(mod, n, None) is not None and getattr(mod, n).is_floating_point()]


def _block_loss(block, inputs: list, calls: list, targets: list, device, backward: bool) -> float:
    """Σ_w ‖block(x_w) − y_w‖² / Σ_w ‖y_w‖², with gradients accumulated when ``backward``."""
    norm = sum(float(t.double().pow(2).sum()) for t in targets)
    total = 0.0
    for hs, (args, kwargs), y in zip(inputs, calls, targets, strict=True):
        args, kwargs = map_tensors((args, kwargs), lambda t: t.to(device))
        with torch.set_grad_enabled(backward):
            out = block(hs.to(device), *args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            loss = (out.float() - y.to(device).float()).pow(2).sum() / norm
            if backward:
                loss.backward()
        total += float(loss)
    return total


def refine_block(block, inputs: list, calls: list, targets: list, device, steps: int,
                 lr: float | None = None) -> dict:
    """Tune the block's SLaBLinear layers for ``steps`` Adam steps of learning rate ``lr`` (default
    ``DEFAULT_LR``; module docstring); returns {"loss_start", "loss_end", "steps"} (relative squared
    output errors on the windows)."""
    lr = DEFAULT_LR if lr is None else lr
    layers = [m for m in block.modules() if isinstance(m, SLaBLinear)]
    if not layers or not any(tunable_buffers(m) for m in layers):  # nothing compressed here
        return {"loss_start": None, "loss_end": None, "steps": 0}
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
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    kept = [p.detach() for p in params]  # what goes back if the tuning fails
    try:
        best = _block_loss(block, inputs, calls, targets, device, backward=False)
        start, kept = best, [p.detach().clone() for p in params]
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = _block_loss(block, inputs, calls, targets, device, backward=True)
            if loss < best:  # the loss of the parameters before this step
                best, kept = loss, [p.detach().clone() for p in params]
            opt.step()
        final = _block_loss(block, inputs, calls, targets, device, backward=False)
        if final < best:
            best, kept = final, [p.detach().clone() for p in params]
    finally:
        for p in frozen:
            p.requires_grad_(True)
        it = iter(kept)
        for mod in layers:
            for name in tunable_buffers(mod):
                mod._buffers[name] = next(it).to(dtypes[(id(mod), name)])
            mod.use_fused = True
            mod._drop_derived()
    return {"loss_start": start, "loss_end": best, "steps": steps}
