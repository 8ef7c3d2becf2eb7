"""The core on NumPy alone: no array-api-compat, the NumPy version pyproject declares."""

import re
from pathlib import Path

import numpy as np
import pytest

import slabopt
from slabopt import _backend

rng = np.random.default_rng(2)
W = rng.standard_t(3, size=(16, 24))
X = rng.standard_normal((60, 24))


@pytest.mark.parametrize("method", ["alternating", "two_level", "slab_offset", "admm", "rpca"])
def test_numpy_core_works_without_array_api_compat(monkeypatch, method):
    kwargs = dict(ratio=0.5, rank=2, method=method, max_iter=3)
    with_compat = slabopt.solve(W, X, **kwargs)
    monkeypatch.setattr(_backend, "_compat", None)
    assert _backend.namespace(W) is np
    plain = slabopt.solve(W, X, **kwargs)
    np.testing.assert_array_equal(plain.reconstruct(), with_compat.reconstruct())
    assert plain.bits == with_compat.bits and plain.sparse.nnz == with_compat.sparse.nnz


def test_declared_numpy_has_what_the_core_uses_without_compat():
    """Without array-api-compat the core calls NumPy's own namespace: cumulative_sum needs 2.1."""
    pyproject = (Path(slabopt.__file__).parent.parent / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*)\]$", pyproject, re.M).group(1)
    low = re.search(r'"numpy>=(\d+)\.(\d+)', deps)
    assert low is not None and (int(low.group(1)), int(low.group(2))) >= (2, 1)
    assert hasattr(np, "cumulative_sum")
