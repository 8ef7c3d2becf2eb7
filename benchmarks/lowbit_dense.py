"""S on every entry with L aligned to its grid (S + L ⊙ B as a (q+1)-bit quantizer) against the same
budget unaligned and against GPTQ per channel, at 5 and 6 bits per weight.

When S keeps every entry (k = n), ``slab_obs`` sets l_ij = 2^(q−1)·σ_i (rank 1, V = 1) so that
l·b + σ_i·(c − 2^(q−1)) runs over the uniform (q+1)-bit grid σ_i·{−2^q … 2^q − 1}, and each entry
takes its sign and code together (``align=None``, the default); ``align=False`` keeps L fitted to |W|.
Block 15's seven SmolLM2 layers, held-out error as ``benchmarks/lowbit_layers.py``.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.lowbit_dense
"""

from __future__ import annotations

import math

import numpy as np

import slabopt

from .lowbit_layers import heldout_error, load

SIZES = ((5.05, 4, 5), (5.3, 4, 5), (6.05, 5, 6), (6.3, 5, 6))  # (bits asked, q of S, GPTQ's bits)


def point(layers: dict, method: str, **kw) -> tuple[float, float, bool]:
    """(bits per weight on disk, geometric-mean held-out error, whether S kept every entry)."""
    errs, bits, dense = [], 0, True
    for W, X, T in layers.values():
        res = slabopt.solve(W.astype(np.float64), X.astype(np.float64), method=method, **kw)
        dense &= res.sparse is not None and res.sparse.nnz == W.size
        errs.append(heldout_error(W, res.reconstruct(), T))
        bits += res.bits
    return bits / sum(W.size for W, _, _ in layers.values()), math.exp(np.mean(np.log(errs))), dense


def main() -> None:
    layers = {n: v for n, v in load().items() if ".15." in n}
    for bits, q, gptq_bits in SIZES:
        b, e, _ = point(layers, "gptq", ratio=None, bits=gptq_bits, group_size=None)
        print(f"gptq int{gptq_bits} per channel: {b:.3f} bits, error {e:.4e}", flush=True)
        for label, align in (("unaligned", False), ("aligned where S is dense", None)):
            b, e, dense = point(layers, "slab_obs", bits=bits, rank=1, sparse_bits=q, align=align)
            kept = "dense" if dense else "not dense"
            print(f"slab_obs {bits} q{q} {label}: {b:.3f} bits, error {e:.4e}, S {kept}", flush=True)


if __name__ == "__main__":
    main()
