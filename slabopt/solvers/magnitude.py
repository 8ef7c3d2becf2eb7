"""Magnitude pruning (Han, Pool, Tran & Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS 2015; the one-shot layer-wise baseline of Wanda and SparseGPT).

Keeps the entries of largest |W_ij| under the budget's pattern (per row by default, "global" for
the classic layer-wise threshold, or N:M). Ignores the activations by design.
"""

from __future__ import annotations

from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..registry import register_method
from ._util import sparse_from_scores


@register_method(
    "magnitude",
    description="S only: keep the largest |W_ij| (Han et al. 2015), activations ignored",
    components=("sparse",),
)
def magnitude(problem: Problem) -> Decomposition:
    """S = W on the budget's largest |W_ij| (ties broken by the selection order)."""
    W = problem.W
    S, mask = sparse_from_scores(problem, W, W * W)
    f = diagonal_objective(problem.W - S, problem.d)
    problem.report(1, f)
    return Decomposition(S=S, mask=mask, history=[f], message="one-shot magnitude pruning")
