"""Which q the diagonal objective prefers, per layer: relative error f/f(0) of slab with
``--sparse-bits q`` at b bits per weight on disk, for the linear layers of one SmolLM2 block, fed the
dense model's activations of 2,048 calibration tokens (4 windows of 512, seed 0).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.q_choice --block 0 --bits 8 6 5

Prints one line per layer and size: q, relative error, fraction of entries kept.
"""

from __future__ import annotations

import argparse

import torch
from slabopt.llm.arch import block_linears, decoder_layers
from slabopt.llm.data import bos_token, calibration_windows, load_model, token_splits

import slabopt


def column_norms(model, windows, block: int) -> dict:
    """d_j = ‖X[:, j]‖ of every linear layer's input in ``block`` (dense model)."""
    sq: dict = {}
    hooks = []
    for name, mod in block_linears(decoder_layers(model)[block]).items():
        def hook(_m, args, key=name):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sq[key] = sq.get(key, 0) + (x * x).sum(0)
        hooks.append(mod.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(windows)
    for h in hooks:
        h.remove()
    return {k: v.sqrt().float() for k, v in sq.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--block", type=int, default=0)
    ap.add_argument("--bits", type=float, nargs="+", default=[8, 6, 5])
    ap.add_argument("--q", type=int, nargs="+", default=[3, 4, 5, 6, 7, 8])
    ap.add_argument("--max-iter", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok, path = load_model(None, "float32")
    calib, _ = token_splits(tok, path)
    windows = calibration_windows(calib, 2048, 512, 0, bos_token(tok))
    norms = column_norms(model, windows, args.block)
    for name, mod in block_linears(decoder_layers(model)[args.block]).items():
        W = mod.weight.detach().float().numpy()
        for b in args.bits:
            cells = []
            for q in args.q:
                r = slabopt.solve(W, col_norms=norms[name].numpy(), ratio=1 - b / 16, rank=1,
                                  positions="bitmask", sparse_bits=q, max_iter=args.max_iter)
                cells.append(f"q{q} {r.relative_error:.2e} ({r.sparse.nnz / W.size:.0%})")
            best = args.q[min(range(len(cells)), key=lambda i: float(cells[i].split()[1]))]
            head = f"block {args.block} {name:18s} {b:g} bits: "
            print(head + " | ".join(cells) + f"  -> f prefers q{best}", flush=True)


if __name__ == "__main__":
    main()
