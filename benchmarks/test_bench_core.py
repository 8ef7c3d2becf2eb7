"""pytest-benchmark suite for the core solver (``make bench``; not part of the default tests).

Sizes of the core issue: 1024², 4096², 4096×11008 at rank 1 and 64, ratio 0.5, 20 iterations,
randomized and exact SVD. Exact SVD on the two large shapes runs only with SLABOPT_BENCH_EXACT=1
(tens of minutes on one thread); ``python -m benchmarks.core_svd`` produces the side-by-side table.
"""

import os

import pytest

import slabopt

from ._matrices import layer_problem

SHAPES = [(1024, 1024), (4096, 4096), (4096, 11008)]


@pytest.mark.parametrize("svd", ["randomized", "exact"])
@pytest.mark.parametrize("rank", [1, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_solve(benchmark, shape, rank, svd):
    if svd == "exact" and shape != (1024, 1024) and not os.environ.get("SLABOPT_BENCH_EXACT"):
        pytest.skip("exact SVD on large shapes: set SLABOPT_BENCH_EXACT=1")
    W, d = layer_problem(*shape)
    res = benchmark.pedantic(
        slabopt.solve,
        args=(W,),
        kwargs=dict(col_norms=d, ratio=0.5, rank=rank, svd=svd, max_iter=20, tol=0),
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info["relative_error"] = res.relative_error
    assert res.n_iter == 20
