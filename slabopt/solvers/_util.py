"""Small helpers shared by the baseline solvers (not part of the public API)."""

from __future__ import annotations

from typing import Any

from .. import _backend as bk
from ..linalg import damped_gram
from ..patterns import select_mask
from ..problem import Problem


def sparse_from_scores(problem: Problem, values: Any, scores: Any) -> tuple[Any, Any]:
    """(S, mask): keep ``values`` where ``scores`` are largest under the problem's budget."""
    xp = problem.xp
    mask = select_mask(scores, problem.budget)
    return xp.where(mask, values, xp.zeros_like(values)), mask


def hessian_or_diag(problem: Problem) -> Any:
    """Damped H of the problem; with only d known, the diagonal H = diag(d²) (+ damping)."""
    xp = problem.xp
    if problem.hessian is not None:
        return problem.hessian
    d2 = problem.d * problem.d
    return damped_gram(xp.eye(d2.shape[0], dtype=d2.dtype, device=bk.device(d2)) * d2,
                       problem.damping)
