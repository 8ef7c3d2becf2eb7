"""One iteration limit, max_iter, honoured by every method; defaults declared at registration."""

import inspect

import numpy as np
import pytest

import slabopt
from slabopt.registry import get_method

rng = np.random.default_rng(21)
W = rng.standard_t(4, size=(16, 24))
X = rng.standard_normal((60, 24))

DEFAULTS = {"alternating": 20, "admm": 60, "oats": 80, "godec": 100, "rpca": 1000, "arb": 15}
# binarizers: their size is fixed by their algorithm, above ratio 0.5 on a layer this small
FIXED_SIZE = {"billm", "arb"}


@pytest.mark.parametrize("method", sorted(slabopt.methods()))
def test_every_method_stops_at_max_iter(method):
    ratio = None if method in FIXED_SIZE else 0.5
    res = slabopt.solve(W, X, ratio=ratio, rank=2, method=method, max_iter=2, tol=0)
    assert 1 <= res.n_iter <= 2 and len(res.history) == res.n_iter
    assert res.settings["max_iter"] == 2
    if method == "rpca":
        assert res.info["alm_iterations"] <= 2


@pytest.mark.parametrize("method", ["alternating", "admm", "oats", "godec", "two_level", "slab_offset"])
def test_iterative_methods_run_exactly_max_iter_without_tol(method):
    res = slabopt.solve(W, X, ratio=0.5, rank=2, method=method, max_iter=3, tol=0,
                        **({"eps_abs": 0.0, "eps_rel": 0.0} if method == "admm" else {}))
    assert res.n_iter == 3 and not res.converged


@pytest.mark.parametrize("method", sorted(slabopt.methods()))
def test_defaults_are_declared_at_registration(method):
    info = get_method(method)
    assert info.default_max_iter == DEFAULTS.get(method, 20)
    assert not {"iterations", "iter_max", "admm_iter", "max_iter_alm"} & set(info.option_names())


def test_max_iter_none_means_the_registered_default():
    assert inspect.signature(slabopt.solve).parameters["max_iter"].default is None
    res = slabopt.solve(W, X, ratio=0.5, rank=2, method="godec", tol=0, error_bound=0.0)
    assert res.settings["max_iter"] == 100 and res.n_iter == 100
    res = slabopt.solve(W, X, ratio=0.5, rank=2, method="rpca", tol_alm=0.0)
    assert res.settings["max_iter"] == 1000 and res.info["alm_iterations"] == 1000


def test_register_method_takes_a_default_max_iter():
    from slabopt.problem import Decomposition

    @slabopt.register_method("test_counter", description="counts", components=("sparse",),
                             max_iter=7, overwrite=True)
    def counter(problem):
        xp = problem.xp
        return Decomposition(S=problem.W, mask=xp.ones(problem.shape, dtype=xp.bool),
                             history=[0.0] * problem.max_iter)

    assert get_method("test_counter").default_max_iter == 7
    assert slabopt.solve(W, method="test_counter", ratio=0.1).n_iter == 7
    assert slabopt.solve(W, method="test_counter", ratio=0.1, max_iter=3).n_iter == 3
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        slabopt.register_method("test_bad", counter, description="x", max_iter=0)


@pytest.mark.parametrize("method", sorted(slabopt.methods()))
def test_gram_need_and_fixed_budget_are_declared(method):
    info = get_method(method)
    assert info.needs_gram is (method in {"sparsegpt", "admm", "gptq", "billm", "arb", "slab_obs"})
    assert info.fixed_budget is (method != "rpca")


def test_register_method_takes_needs_gram_and_fixed_budget():
    def noop(problem):
        raise NotImplementedError

    slabopt.register_method("test_flags", noop, description="flags", needs_gram=True,
                            fixed_budget=False, overwrite=True)
    info = get_method("test_flags")
    assert info.needs_gram is True and info.fixed_budget is False
    slabopt.register_method("test_flags", noop, description="flags", overwrite=True)
    assert get_method("test_flags").needs_gram is False and get_method("test_flags").fixed_budget is True


def test_rpca_project_meets_the_budget_and_plain_rpca_reports_what_it_reached():
    res = slabopt.solve(W, X, ratio=0.5, rank=2, method="rpca", project=True)
    assert res.sparse.nnz <= res.budget.nnz and res.rank <= 2 and res.ratio >= 0.5
    free = slabopt.solve(W, X, ratio=0.5, rank=2, method="rpca")
    assert free.rank == free.info["reached_rank"] and free.sparse.nnz == free.info["reached_nnz"]
