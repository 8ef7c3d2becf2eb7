"""Wanda (Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
Models", ICLR 2024; github.com/locuslab/wanda).

Score S_ij = |W_ij| · ‖X_j‖₂, compared within each output row (the authors' default comparison
group), no weight update. The "global" and N:M patterns of the budget are honoured (Wanda's N:M
variant keeps the N best-scored weights of every M consecutive inputs of a row).
"""

from __future__ import annotations

from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..registry import register_method
from ._util import sparse_from_scores


@register_method(
    "wanda",
    description="S only: keep the largest |W_ij|·‖X_j‖ per output row (Sun et al. 2024)",
    components=("sparse",),
)
def wanda(problem: Problem) -> Decomposition:
    """S = W on the largest |W_ij|·d_j per row (pattern "row"), globally, or per N:M group."""
    W, d = problem.W, problem.d
    scores = W * d
    S, mask = sparse_from_scores(problem, W, scores * scores)
    f = diagonal_objective(problem.W - S, problem.d)
    problem.report(1, f)
    return Decomposition(S=S, mask=mask, history=[f], message="one-shot Wanda pruning")
