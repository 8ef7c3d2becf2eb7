"""S + per-row two-level code (docs/formulation.md §2.1, the SLaB paper's Lemma 1).

Ŵ = S + T with T_ij ∈ {low_i, high_i}: two b-bit values per row plus one bit per entry, so the
storage is (b + ι)·nnz(S) + 2·b·m + m·n bits (the ``"twolevel"`` budget component). Alternates,
from T = 0, two exact block minimisations of f = ‖(W − S − T)D‖_F²:

1. sparse step: keep the budget's largest |W − T|_ij·d_j, S = mask ⊙ (W − T)   (P4);
2. code step, *jointly* over T and the values of S on the fixed mask: the masked entries are
   absorbed exactly by S, so T is the exact weighted two-level quantiser (Lemma 1,
   :func:`slabopt.two_level_quantize`) of each row of W with weights d_j² off the mask and 0 on it.

Both steps are exact, so f never increases. The levels are returned as the 2×m array
``levels`` (row 0 low, row 1 high) and ``B`` (True = high) is the stored bit matrix.
"""

from __future__ import annotations

from .. import _backend as bk
from ..level_quantizer import two_level_quantize
from ..patterns import select_mask
from ..problem import Decomposition, Problem
from ..registry import register_method


@register_method(
    "two_level",
    description="S + per-row two-level code {a_i, b_i} fitted exactly by Lemma 1, alternating",
    components=("sparse", "twolevel"),
)
def two_level(problem: Problem) -> Decomposition:
    """Alternate the sparse step and the exact weighted two-level fit (monotone in f)."""
    xp = problem.xp
    W, d = problem.W, problem.d
    w2 = xp.broadcast_to(xp.reshape(d * d, (1, -1)), W.shape)
    T = xp.zeros_like(W)
    history: list[float] = []
    converged = False
    zero = xp.zeros_like(W)
    for _ in range(problem.max_iter):
        R = W - T
        mask = select_mask(R * R * w2, problem.budget)
        low, high, is_high = two_level_quantize(W, xp.where(mask, zero, w2))
        T = xp.where(is_high, xp.reshape(high, (-1, 1)), xp.reshape(low, (-1, 1)))
        E = xp.where(mask, zero, (W - T) * d)
        if problem.record(history, bk.to_float(xp.sum(E * E))):
            converged = True
            break
    S = xp.where(mask, W - T, zero)
    return Decomposition(S=S, mask=mask, B=is_high, history=history, converged=converged,
                         message=problem.stop_message(converged), levels=xp.stack([low, high]))
