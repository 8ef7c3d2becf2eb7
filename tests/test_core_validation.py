"""Every bad input gets a clear error naming the problem and what is allowed."""

import numpy as np
import pytest

import slabopt

rng = np.random.default_rng(0)
W = rng.standard_normal((8, 12))
X = rng.standard_normal((20, 12))


def with_value(a, idx, value):
    a = a.copy()
    a[idx] = value
    return a


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((with_value(W, (0, 0), np.nan), X), {}, ValueError, r"W contains 1 NaN or Inf"),
        ((with_value(W, (1, 2), np.inf), X), {}, ValueError, r"W contains 1 NaN or Inf"),
        ((W, with_value(X, (3, 3), np.nan)), {}, ValueError, r"X contains 1 NaN or Inf"),
        ((W[0], X), {}, ValueError, r"W must be 2-D, got 1-D"),
        ((W[None], X), {}, ValueError, r"W must be 2-D, got 3-D"),
        ((W, X[:, :5]), {}, ValueError, r"X has 5 columns but W has n = 12"),
        ((np.zeros((0, 12)), None), {}, ValueError, r"W is empty"),
        ((W.astype(np.int64).astype(np.int32), X), {}, TypeError, r"dtype int32; allowed"),
        ((W.astype(np.complex128), X), {}, TypeError, r"dtype complex128; allowed"),
        ((W.astype(bool), X), {}, TypeError, r"dtype bool; allowed"),
        (("abc", X), {}, TypeError, r"dtype"),
        ((None, X), {}, TypeError, r"W must be an array, got None"),
        ((W, X), {"rank": -1}, ValueError, r"rank must be in \[0, 8\]"),
        ((W, X), {"rank": 9}, ValueError, r"rank must be in \[0, 8\]"),
        ((W, X), {"ratio": 0}, ValueError, r"open interval \(0, 1\)"),
        ((W, X), {"ratio": 1.5}, ValueError, r"open interval \(0, 1\)"),
        ((W, X), {"ratio": 0.9, "rank": 4}, slabopt.InfeasibleBudgetError, r"largest reachable"),
        ((W, X), {"method": "nope"}, ValueError, r"unknown method 'nope'; known methods: .*alternating"),
        ((W, X), {"pattern": "zigzag"}, ValueError, r"unknown pattern 'zigzag'; known patterns"),
        ((W, X), {"pattern": "2:5"}, ValueError, r"multiple of 5"),
        ((W, np.zeros_like(X)), {}, ValueError, r"activations are all zero"),
        ((W, X), {"variant": "fast"}, ValueError, r"unknown variant 'fast'; allowed: 'weighted', 'paper'"),
        ((W, X), {"svd": "lanczos"}, ValueError, r"unknown svd 'lanczos'"),
        ((W, X), {"bogus": 1}, TypeError, r"unknown option\(s\) bogus; its options are: variant"),
        ((W, X), {"max_iter": 0}, ValueError, r"max_iter must be >= 1"),
        ((W, X), {"tol": -1.0}, ValueError, r"tol must be >= 0"),
        ((W, X), {"seed": -3}, ValueError, r"seed must be >= 0"),
        ((W, X), {"col_norms": np.ones(12)}, ValueError, r"at most one of X, col_norms, gram"),
        ((W, None), {"col_norms": np.ones(5)}, ValueError, r"col_norms has length 5, expected n = 12"),
        ((W, None), {"col_norms": -np.ones(12)}, ValueError, r"non-negative"),
        ((W, None), {"gram": np.eye(5)}, ValueError, r"gram must be n × n = 12 × 12"),
        ((W, None), {"gram": -np.eye(12)}, ValueError, r"diagonal has negative entries"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        slabopt.solve(*args, **{"rank": 1, **kwargs})


def test_inputs_are_never_modified():
    W32 = W.astype(np.float32)
    X32 = X.astype(np.float32)
    W_copy, X_copy = W32.copy(), X32.copy()
    slabopt.solve(W32, X32, rank=2)
    slabopt.solve(W, X, rank=2)
    assert np.array_equal(W32, W_copy) and np.array_equal(X32, X_copy)


def test_zero_activation_columns_and_constant_rows():
    Wc = W.copy()
    Wc[3] = 2.5  # constant row
    Xz = X.copy()
    Xz[:, [0, 5]] = 0  # dead inputs
    res = slabopt.solve(Wc, Xz, ratio=0.5, rank=2)
    W_hat = res.reconstruct()
    assert np.isfinite(W_hat).all()
    assert np.all(np.diff(res.history) <= 1e-9 * res.history[0])


def test_integer_lists_are_accepted_as_float64():
    res = slabopt.solve(W.round().tolist(), None, rank=1)
    assert res.reconstruct().dtype == np.float64


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0.0, ValueError, r"ratio must be a finite number in the open interval \(0, 1\), got 0.0"),
        (1, ValueError, r"open interval \(0, 1\), got 1"),
        (-0.2, ValueError, r"open interval \(0, 1\)"),
        (float("nan"), ValueError, r"open interval \(0, 1\)"),
        (float("inf"), ValueError, r"open interval \(0, 1\)"),
        (True, TypeError, r"ratio must be a number in \(0, 1\), got bool"),
        ("0.5", TypeError, r"ratio must be a number in \(0, 1\), got str"),
    ],
)
def test_check_ratio_rejects(value, error, match):
    from slabopt._validation import check_ratio

    with pytest.raises(error, match=match) as exc:
        check_ratio("ratio", value)
    assert "\n" not in str(exc.value)


def test_check_ratio_accepts_and_returns_float():
    from slabopt._validation import check_ratio

    assert check_ratio("ratio", 0.25) == 0.25 and type(check_ratio("r", np.float32(0.5))) is float


def test_validation_helpers_live_in_one_module():
    import slabopt.api
    import slabopt.budget
    import slabopt.objective
    import slabopt.problem
    from slabopt import _validation as v

    assert v.check_int("k", 3, 0, 5) == 3 and v.check_real("t", 1, 0.0) == 1.0
    assert v.check_choice("mode", "a", ("a", "b")) == "a"
    for name in ("check_int", "check_real", "check_choice", "as_matrix", "resolve_activations"):
        for module in (slabopt.api, slabopt.budget, slabopt.problem, slabopt.objective):
            if hasattr(module, name):
                assert getattr(module, name) is getattr(v, name), (module.__name__, name)


def test_objective_and_problem_do_not_import_each_other():
    import ast
    from pathlib import Path

    root = Path(slabopt.__file__).parent
    for src, other in (("objective.py", "problem"), ("problem.py", "objective")):
        tree = ast.parse((root / src).read_text())
        names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert other not in names, f"{src} imports .{other}"


def test_removed_helpers_stay_removed():
    import slabopt._backend
    import slabopt.solvers._util
    import slabopt.solvers.slab_plus

    assert not hasattr(slabopt._backend, "astype") and not hasattr(slabopt._backend, "where")
    assert not hasattr(slabopt.solvers._util, "f_value")  # f is objective.diagonal_objective
    assert not hasattr(slabopt.solvers._util, "max_rank_for_ratio")  # budget.max_rank_for_ratio
    assert not hasattr(slabopt.problem.Problem, "extras")


def test_keyword_only_options_are_the_only_options():
    from slabopt.registry import get_method

    def positional(problem, extra=1, *, opt=2):
        raise NotImplementedError

    slabopt.register_method("test_positional", positional, description="x", overwrite=True)
    assert get_method("test_positional").option_names() == ["opt"]
    with pytest.raises(TypeError, match=r"unknown option\(s\) extra; its options are: opt"):
        slabopt.solve(W, method="test_positional", extra=3)


def test_slab_is_the_name_of_the_alternating_solver_in_the_library_too():
    """The CLI's ``--method slab`` and ``slabopt.solve(method="slab")`` run the same solver."""
    rng = np.random.default_rng(3)
    W, X = rng.standard_normal((24, 40)), rng.standard_normal((100, 40))
    a = slabopt.solve(W, X, method="slab", ratio=0.6, rank=2, max_iter=3)
    b = slabopt.solve(W, X, method="alternating", ratio=0.6, rank=2, max_iter=3)
    assert a.method == "alternating" and np.array_equal(a.reconstruct(), b.reconstruct())
    assert "slab" in slabopt.methods() and "alternating" in slabopt.methods()["slab"]


def test_nm_pattern_over_the_asked_ratio_is_refused_by_solve():
    """solve(pattern="2:4", ratio=0.5) cannot store 2:4 within half the dense bits: one clear error
    (the command line refuses it too), while ratio=None or a ratio the pattern meets solves."""
    rng = np.random.default_rng(4)
    W, X = rng.standard_normal((32, 64)), rng.standard_normal((100, 64))
    with pytest.raises(slabopt.InfeasibleBudgetError, match=r"ratio 0.5 allows.*ratio=None"):
        slabopt.solve(W, X, pattern="2:4", ratio=0.5, rank=1)
    free = slabopt.solve(W, X, pattern="2:4", ratio=None, rank=1)
    assert slabopt.solve(W, X, pattern="2:4", ratio=free.ratio - 1e-9, rank=1).bits == free.bits
