"""Each block step of the alternating solver against brute force (docs/formulation.md §5, P2–P4, descent)."""

import itertools

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import slabopt
from slabopt.solvers import alternating as alt
from slabopt.solvers.alternating import binary_step, lowrank_step, outer, sparse_step

from ._problems import heavy_tailed, make_problem, spread_weights


def f_diag(E, d):
    return float(np.sum((E * d) ** 2))


@given(seed=st.integers(0, 10**6), pattern=st.sampled_from(["row", "global", "2:4"]))
def test_sparse_step_beats_every_mask(seed, pattern):
    """P4: for fixed L ⊙ B, the selected mask is optimal among all masks of the pattern."""
    rng = np.random.default_rng(seed)
    m, n = 2, 4
    W = heavy_tailed(rng, (m, n))
    d = spread_weights(rng, n, dead=rng.integers(0, 2))
    LB = rng.standard_normal((m, n))
    prob = make_problem(W, d, ratio=0.6, rank=0, pattern=pattern)
    S, mask = sparse_step(prob, LB)
    k = prob.budget.nnz
    assert int(mask.sum()) == k
    ours = f_diag(W - S - LB, d)
    for keep in itertools.combinations(range(m * n), k):
        cand = np.zeros(m * n, dtype=bool)
        cand[list(keep)] = True
        cand = cand.reshape(m, n)
        if pattern == "row" and not (cand.sum(1) == prob.budget.nnz_per_row).all():
            continue
        if pattern == "2:4" and not (cand.reshape(m, -1, 4).sum(-1) == 2).all():
            continue
        best = f_diag((W - LB) * ~cand, d)  # S = cand ⊙ R is optimal for a fixed mask
        assert ours <= best * (1 + 1e-12) + 1e-12


@given(seed=st.integers(0, 10**6))
def test_binary_step_beats_every_sign_pattern(seed):
    """P2: for fixed L, B = sign(R ⊙ L) minimises f; minimum Σ d_j²(|R_ij| − |L_ij|)²."""
    rng = np.random.default_rng(seed)
    m, n = 3, 4
    R = heavy_tailed(rng, (m, n))
    L = rng.standard_normal((m, n))
    d = spread_weights(rng, n)
    B = binary_step(R, L)
    ours = f_diag(R - L * B, d)
    assert ours == pytest.approx(float(np.sum(d**2 * (np.abs(R) - np.abs(L)) ** 2)), rel=1e-12)
    for bits in itertools.product((-1.0, 1.0), repeat=m * n):
        cand = np.array(bits).reshape(m, n)
        assert ours <= f_diag(R - L * cand, d) * (1 + 1e-12)


def test_sign_of_zero_is_plus_one():
    R = np.array([[0.0, -1.0, 2.0]])
    assert binary_step(R, None).tolist() == [[1.0, -1.0, 1.0]]
    assert binary_step(R, np.zeros_like(R)).tolist() == [[1.0, 1.0, 1.0]]


def mp_truncated(M, r):
    """Best rank-r approximation of M via a 50-digit mpmath SVD."""
    with mpmath.workdps(50):
        U, S, V = mpmath.svd_r(mpmath.matrix(M.tolist()))
        approx = U[:, :r] * mpmath.diag(S[:r]) * V[:r, :]
        return np.array(approx.tolist(), dtype=float)


@given(seed=st.integers(0, 10**6), r=st.integers(1, 3), svd=st.sampled_from(["exact", "randomized"]))
def test_lowrank_step_matches_high_precision_reference(seed, r, svd):
    """P3: L = SVD_r((R⊙B) D) D⁻¹ minimises f over rank ≤ r (Eckart–Young, 50-digit reference)."""
    rng = np.random.default_rng(seed)
    m, n = 5, 6
    RB = heavy_tailed(rng, (m, n))
    d = spread_weights(rng, n)
    prob = make_problem(RB, d, rank=0)  # the budget plays no part in this step
    U, V, _ = lowrank_step(prob, RB, r, svd=svd, oversample=n, power_iters=4)
    assert U.shape == (m, r) and V.shape == (n, r)
    ours = f_diag(RB - outer(U, V), d)
    reference = f_diag(RB * d - mp_truncated(RB * d, r), 1.0)
    assert ours == pytest.approx(reference, rel=1e-9, abs=1e-9 * f_diag(RB, d))
    for _ in range(20):  # and no random rank-r competitor does better
        scale = rng.choice([1e-3, 0.1, 1.0])
        cand = (U + scale * rng.standard_normal((m, r))) @ (V + scale * rng.standard_normal((n, r))).T
        assert ours <= f_diag(RB - cand, d) * (1 + 1e-12)


def test_lowrank_step_dead_columns_get_zero_and_no_nan():
    rng = np.random.default_rng(0)
    RB = rng.standard_normal((6, 5))
    d = np.array([1.0, 0.0, 2.0, 0.0, 3.0])
    U, V, _ = lowrank_step(make_problem(RB, d, rank=0), RB, 2)
    assert np.isfinite(U).all() and np.isfinite(V).all()
    assert np.all(V[[1, 3]] == 0)


@given(
    seed=st.integers(0, 10**6),
    m=st.integers(2, 24),
    n=st.integers(2, 24),
    ratio=st.floats(0.2, 0.8),
    svd=st.sampled_from(["exact", "randomized"]),
    dead=st.integers(0, 2),
)
def test_weighted_variant_never_increases_objective(seed, m, n, ratio, svd, dead):
    rng = np.random.default_rng(seed)
    W = heavy_tailed(rng, (m, n), df=1.5)
    d = spread_weights(rng, n, decades=3, dead=min(dead, n - 1))
    rank = int(rng.integers(1, min(m, n) + 1))
    try:
        res = slabopt.solve(W, col_norms=d, ratio=ratio, rank=rank, svd=svd, max_iter=15, tol=0)
    except slabopt.InfeasibleBudgetError:
        return
    h = np.array(res.history)
    assert np.all(np.diff(h) <= 1e-10 * h[0] + 1e-300)
    assert res.objective == pytest.approx(h[-1], rel=1e-9, abs=1e-12 * res.objective_zero)


def test_paper_variant_runs_and_reports_weighted_objective():
    rng = np.random.default_rng(1)
    W = heavy_tailed(rng, (30, 40))
    d = spread_weights(rng, 40)
    res = slabopt.solve(W, col_norms=d, ratio=0.5, rank=2, variant="paper")
    assert res.settings["variant"] == "paper"
    assert res.objective == pytest.approx(f_diag(W - res.reconstruct(), d), rel=1e-9)


def _sketch_power_iters(monkeypatch, **kw):
    """The power iterations of every truncated SVD of one alternating solve, and whether each was
    warm-started."""
    calls = []
    real = alt.truncated_svd

    def spy(M, rank, **options):
        calls.append((options["power_iters"], options["start"] is not None))
        return real(M, rank, **options)

    monkeypatch.setattr(alt, "truncated_svd", spy)
    rng = np.random.default_rng(3)
    W = heavy_tailed(rng, (64, 96)).astype(np.float32)
    d = spread_weights(rng, 96).astype(np.float32)
    slabopt.solve(W, col_norms=d, ratio=0.5, max_iter=4, tol=0, svd="randomized", **kw)
    return calls


@pytest.mark.parametrize("kernel", ["numpy", "auto"])
def test_warm_sketches_run_warm_power_iters(monkeypatch, kernel):
    """Rank 1: the first (cold) sketch runs ``power_iters``, the sketches warm-started from the
    previous right singular vector run none ("auto"); rank > 1 keeps ``power_iters``; an explicit
    ``warm_power_iters`` and ``warm_start=False`` are obeyed."""
    cold, warm = (2, False), (0, True)
    assert _sketch_power_iters(monkeypatch, rank=1, kernel=kernel) == [cold] + 3 * [warm]
    assert _sketch_power_iters(monkeypatch, rank=3, kernel=kernel) == [cold] + 3 * [(2, True)]
    assert _sketch_power_iters(monkeypatch, rank=1, kernel=kernel, warm_power_iters=1,
                               power_iters=3) == [(3, False)] + 3 * [(1, True)]
    assert _sketch_power_iters(monkeypatch, rank=1, kernel=kernel, warm_start=False) == 4 * [cold]


def test_warm_power_iters_is_validated():
    W = np.ones((8, 8))
    with pytest.raises(ValueError, match="warm_power_iters"):
        slabopt.solve(W, col_norms=np.ones(8), ratio=0.5, rank=1, warm_power_iters=-1)


def test_rank_one_warm_sketches_cost_no_objective():
    """At rank 1 the warm sketch without power iterations ends where q = 2 and the exact SVD end,
    within 1e-4 after 20 iterations (the trajectories differ, either way: measured −2e-5..+4e-5)."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        W = heavy_tailed(rng, (192, 640)).astype(np.float32)
        d = spread_weights(rng, 640).astype(np.float32)
        kw = dict(col_norms=d, ratio=0.5, rank=1, max_iter=20, tol=0)
        fast = slabopt.solve(W, svd="randomized", **kw)
        slow = slabopt.solve(W, svd="randomized", warm_power_iters=2, **kw)
        exact = slabopt.solve(W, svd="exact", **kw)
        assert fast.objective <= min(slow.objective, exact.objective) * (1 + 1e-4)


@given(seed=st.integers(0, 10**6), m=st.integers(12, 40), n=st.integers(12, 40), r=st.integers(1, 3),
       p=st.integers(0, 3))
def test_warm_sketch_without_power_iterations_never_loses_to_its_start(seed, m, n, r, p):
    """docs/formulation.md §5.3: with test matrix [Q Ω] and no power iteration, the rank-r result
    is at least as good as M Q Qᵀ, hence as any U Qᵀ (the previous factors among them)."""
    rng = np.random.default_rng(seed)
    M = rng.standard_t(3, size=(m, n))
    Q = np.linalg.qr(rng.standard_normal((n, r)))[0]
    P, s, Qn = alt.truncated_svd(M, r, method="randomized", oversample=p, power_iters=0, seed=seed,
                                 start=Q)
    new = np.sum((M - (P * s) @ Qn.T) ** 2)
    projected = np.sum((M - M @ Q @ Q.T) ** 2)
    other = np.sum((M - rng.standard_normal((m, r)) @ Q.T) ** 2)
    assert new <= projected * (1 + 1e-10) + 1e-12 * np.sum(M**2)
    assert projected <= other * (1 + 1e-10)


def test_randomized_svd_objective_close_to_exact():
    """The randomized range finder loses < 0.5% objective against the exact SVD."""
    rng = np.random.default_rng(2)
    W = heavy_tailed(rng, (256, 384)).astype(np.float32)
    d = spread_weights(rng, 384).astype(np.float32)
    for rank in (1, 8):
        exact = slabopt.solve(W, col_norms=d, ratio=0.5, rank=rank, svd="exact")
        fast = slabopt.solve(W, col_norms=d, ratio=0.5, rank=rank, svd="randomized")
        assert fast.objective <= exact.objective * 1.005
