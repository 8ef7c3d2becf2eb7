"""Small random problems shared by the core tests."""

from slabopt import budget
from slabopt.problem import Problem


def heavy_tailed(rng, shape, df=2.5):
    """Student-t entries: heavy tails like LLM weights."""
    return rng.standard_t(df, size=shape)


def spread_weights(rng, n, decades=3.0, dead=0):
    """Column weights spread over ``decades`` orders of magnitude, ``dead`` of them zero."""
    d = 10 ** rng.uniform(0, decades, n)
    d[rng.choice(n, size=dead, replace=False)] = 0
    return d


def make_problem(W, d, ratio=0.5, rank=1, pattern="row"):
    """A Problem with d rescaled to max 1, as solve() builds it."""
    bud = budget(W.shape, ratio, rank, pattern=pattern)
    scale = float(d.max())
    return Problem(W=W, d=d / scale, d_scale=scale, budget=bud)
