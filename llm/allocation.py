"""Non-uniform budgets across blocks at a fixed total: OWL's outlier-weighted allocation.

After Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)", ICML 2024 (the authors' defaults
M = 5, λ = 0.08). With the dense model's calibration activations, the score of a weight is Wanda's
A_ij = |W_ij|·‖X_:,j‖₂; the outlier ratio of block b is

    D_b = #{(i, j) in the block's target layers : A_ij > M · mean(A)} / #(entries),

the mean taken over all the block's target layers together. Blocks with more outliers get a lower
ratio (they keep more):

    z_b = (D_b − min D) / (max D − min D),     r_b = r − 2λ·(z_b − z̄),

z̄ the mean of z weighted by the blocks' dense sizes, so Σ_b size_b · r_b = r · Σ_b size_b: each
layer stays within its block's ratio, hence the whole model within r. (OWL allocates sparsity,
i.e. kept entries; here the same rule moves the storage ratio that every method's budget takes.)
"""

from __future__ import annotations

import torch

from .arch import block_linears, block_prefix, decoder_layers
from .calibration import BlockInputs, block_outputs, collect_stats

OWL_M = 5.0
OWL_LAMBDA = 0.08


def outlier_ratio(layers: dict, col_norms: dict, m: float = OWL_M) -> float:
    """D of one block: the fraction of its weights whose |W_ij|·d_j exceeds m times the mean."""
    scores = [(mod.weight.detach().abs().float() * col_norms[name].float()).reshape(-1)
              for name, mod in layers.items()]
    flat = torch.cat(scores)
    return float((flat > m * flat.mean()).double().mean())


def block_ratios(outliers: list[float], sizes: list[int], ratio: float,
                 lam: float = OWL_LAMBDA) -> list[float]:
    """r_b = r − 2λ·(z_b − z̄) for the outlier ratios D_b (module docstring); every r_b in (0, 1)."""
    lo, hi = min(outliers), max(outliers)
    if hi <= lo:
        return [ratio] * len(outliers)
    z = [(d - lo) / (hi - lo) for d in outliers]
    mean = sum(s * v for s, v in zip(sizes, z, strict=True)) / sum(sizes)
    out = [ratio - 2 * lam * (v - mean) for v in z]
    if not all(0 < r < 1 for r in out):
        raise ValueError(f"ratio {ratio} with OWL's ±{2 * lam} leaves (0, 1): {min(out):.4f}…{max(out):.4f}")
    return out


def dense_outlier_ratios(model: torch.nn.Module, hidden: list[torch.Tensor], calls: list[list],
                         device: torch.device, targets: str | None, ignore: str | None) -> list[float]:
    """D_b of every block, from the dense model's activations on the calibration windows: one dense
    forward pass, block by block, from the ``hidden`` states entering block 0 (``calls[b]``: the
    other arguments of block b for each window, as :func:`.arch.capture_calls` records them)."""
    out = []
    for b, block in enumerate(decoder_layers(model)):
        block.to(device)
        inputs = BlockInputs(hidden, calls[b], device)
        lin = block_linears(block, block_prefix(model, b), targets, ignore)
        out.append(_block_outlier_ratio(block, inputs, lin))
        hidden = block_outputs(block, inputs)
        block.to("cpu")
    return out


def _block_outlier_ratio(block, inputs: BlockInputs, lin: dict) -> float:
    """D of one dense block from its inputs' column norms (0 for a block without target layers)."""
    if not lin:
        return 0.0
    stats, _ = collect_stats(block, inputs, lin, need_gram=False)
    return outlier_ratio(lin, {n: stats[n]["sq"].sqrt() for n in lin})
