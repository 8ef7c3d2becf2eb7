"""Property tests of the docs/formulation.md §6 statements at random sizes (docs/theory.md gives the proofs).

Where the statement is already tested against brute force elsewhere, this module does not repeat
it; the map is:

* Lemma 1 -- brute force over every 2-partition: ``test_solvers_quantize.py``; here: the structure
  the lemma asserts (a split of the sorted row into two contiguous groups, levels = weighted means).
* P1 (sign isometry) -- here.
* P2, P4 (binary, sparse step vs every sign pattern / mask) -- ``test_core_steps.py``; here: P4's
  separability at random sizes (no mask of the pattern beats the step by a single swap).
* P3 (low-rank step vs a 50-digit SVD) -- ``test_core_steps.py``.
* Descent -- row pattern in ``test_core_steps.py``; here: the global and N:M patterns and index bits.
* Rank-1 fixed point, invariances of ``slabopt.solve`` -- here.
"""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import slabopt
from slabopt.level_quantizer import two_level_quantize
from slabopt.solvers.alternating import binary_step, lowrank_step, outer, sparse_step

from ._problems import heavy_tailed, make_problem, spread_weights

seeds = st.integers(0, 2**32 - 1)


def f_diag(E, d):
    """f = ‖E D‖_F²."""
    return float(np.sum((E * d) ** 2))


@given(seed=seeds, m=st.integers(1, 9), n=st.integers(1, 9))
def test_p1_sign_isometry(seed, m, n):
    """P1: ‖(R − L⊙B) D‖ = ‖(R⊙B − L) D‖ for every B ∈ {±1}^{m×n} and weights d ≥ 0."""
    rng = np.random.default_rng(seed)
    R, L = heavy_tailed(rng, (m, n)), rng.standard_normal((m, n))
    B = rng.choice([-1.0, 1.0], size=(m, n))
    d = spread_weights(rng, n, dead=int(rng.integers(0, n)))
    lhs, rhs = f_diag(R - L * B, d), f_diag(R * B - L, d)
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-300)


@given(seed=seeds, n=st.integers(2, 40), tied=st.booleans(), weighted=st.booleans())
def test_lemma1_minimiser_is_a_split_with_mean_levels(seed, n, tied, weighted):
    """Lemma 1: the optimum is a split t of the sorted row; low, high are the group means and the
    cost equals the best of the n − 1 splits (computed here directly, one split at a time)."""
    rng = np.random.default_rng(seed)
    w = rng.integers(-3, 4, n).astype(float) if tied else rng.standard_t(2, n)
    om = rng.uniform(0.1, 5.0, n) if weighted else np.ones(n)
    low, high, is_high = two_level_quantize(w, om if weighted else None)
    low, high = float(low), float(high)
    assert low <= high
    if is_high.any() and (~is_high).any():  # contiguous: every high entry ≥ every low entry
        assert w[is_high].min() >= w[~is_high].max()
        for grp, level in ((is_high, high), (~is_high, low)):
            assert level == pytest.approx(np.average(w[grp], weights=om[grp]), rel=1e-9, abs=1e-9)
    cost = float(np.sum(om * np.minimum((w - low) ** 2, (w - high) ** 2)))
    order = np.argsort(w, kind="stable")
    ws, os_ = w[order], om[order]
    best = np.inf
    for t in range(n - 1):
        split = 0.0
        for part, wt in ((ws[: t + 1], os_[: t + 1]), (ws[t + 1 :], os_[t + 1 :])):
            split += float(np.sum(wt * (part - np.average(part, weights=wt)) ** 2))
        best = min(best, split)
    assert cost <= best * (1 + 1e-9) + 1e-12
    assert cost >= best * (1 - 1e-9) - 1e-12


@given(seed=seeds, m=st.integers(2, 12), n=st.integers(4, 16),
       pattern=st.sampled_from(["row", "global", "2:4"]))
def test_p4_no_single_swap_improves_the_mask(seed, m, n, pattern):
    """P4 at random sizes: swapping one kept and one dropped entry (within what the pattern
    allows) never lowers f -- the exchange argument of the proof."""
    n -= n % 4
    rng = np.random.default_rng(seed)
    W, LB = heavy_tailed(rng, (m, n)), rng.standard_normal((m, n))
    d = spread_weights(rng, n)
    prob = make_problem(W, d, ratio=0.6, rank=0, pattern=pattern)
    _, mask = sparse_step(prob, LB)
    score = (np.abs(W - LB) * d) ** 2  # the f-cost of dropping each entry
    groups = {"row": (m, 1, n), "global": (1, 1, m * n), "2:4": (m, n // 4, 4)}[pattern]
    kept = np.where(mask, score, np.inf).reshape(groups).min(-1)
    dropped = np.where(mask, -np.inf, score).reshape(groups).max(-1)
    assert np.all(kept >= dropped * (1 - 1e-12))


@given(
    seed=seeds,
    m=st.integers(2, 20),
    n=st.integers(4, 20),
    pattern=st.sampled_from(["global", "2:4", "4:8"]),
    index_bits=st.sampled_from([0, 4]),
)
def test_descent_other_patterns(seed, m, n, pattern, index_bits):
    """Descent holds for every pattern: each step is an exact block minimiser of f."""
    n = max(8, n - n % 8)
    rng = np.random.default_rng(seed)
    W = heavy_tailed(rng, (m, n), df=1.5)
    d = spread_weights(rng, n, decades=3, dead=int(rng.integers(0, 2)))
    rank = int(rng.integers(1, 3))
    ratio = None if ":" in pattern else 0.4
    try:
        res = slabopt.solve(W, col_norms=d, ratio=ratio, rank=rank, pattern=pattern,
                            index_bits=index_bits, svd="exact", max_iter=10, tol=0)
    except slabopt.InfeasibleBudgetError:
        assume(False)
    h = np.array(res.history)
    assert np.all(np.diff(h) <= 1e-10 * h[0] + 1e-300)


@given(seed=seeds, m=st.integers(2, 15), n=st.integers(2, 15))
def test_rank1_fixed_point(seed, m, n):
    """B = sign(R), L = SVD₁(|R| D) D⁻¹ is non-negative and steps 2–3 map it to itself."""
    rng = np.random.default_rng(seed)
    R = heavy_tailed(rng, (m, n))
    d = spread_weights(rng, n, decades=2)
    prob = make_problem(R, d, rank=0)
    B0 = binary_step(R, None)
    U, V, _ = lowrank_step(prob, R * B0, 1, svd="exact")
    L0 = outer(U, V)
    s = np.linalg.svd(np.abs(R) * prob.d, compute_uv=False)
    assume(s[0] - s[1] > 1e-6 * s[0])  # a simple leading singular value: L0 is unique
    L0 = L0 * np.sign(L0.sum())  # the SVD's sign is arbitrary; Perron–Frobenius: one sign fits all
    assert L0.min() >= -1e-12 * np.abs(L0).max()
    B1 = binary_step(R, L0)
    assert np.array_equal(B1[L0 > 0], B0[L0 > 0])
    U1, V1, _ = lowrank_step(prob, R * B1, 1, svd="exact")
    L1 = outer(U1, V1)
    assert np.linalg.norm(np.abs(L1) - L0) <= 1e-9 * np.linalg.norm(L0)


def _solve(W, X, **kw):
    return slabopt.solve(W, X, ratio=0.3, svd="exact", max_iter=5, tol=0, **kw)


@given(seed=seeds, m=st.integers(4, 16), n=st.integers(4, 16), log_c=st.floats(-3, 3),
       rank=st.integers(1, 2))
def test_invariances_of_solve(seed, m, n, log_c, rank):
    """solve(cW) = c·solve(W); solve(W, cX) = solve(W, X); permutations commute; exact budget."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, n))
    X = rng.standard_normal((2 * n, n)) * 10 ** rng.uniform(0, 2, n)
    c = 10.0**log_c
    try:
        base = _solve(W, X, rank=rank)
    except slabopt.InfeasibleBudgetError:
        assume(False)
    ref = base.reconstruct()
    tol = 1e-8 * np.linalg.norm(ref)
    assert np.linalg.norm(_solve(c * W, X, rank=rank).reconstruct() - c * ref) <= c * tol
    assert np.linalg.norm(_solve(W, c * X, rank=rank).reconstruct() - ref) <= tol
    p, q = rng.permutation(m), rng.permutation(n)
    perm = _solve(W[p][:, q], X[:, q], rank=rank).reconstruct()
    assert np.linalg.norm(perm - ref[p][:, q]) <= tol
    assert base.sparse.nnz == base.budget.nnz and base.ratio >= 0.3
    assert base.bits == slabopt.budget(W.shape, 0.3, rank).bits


def test_invariances_with_the_default_randomized_svd():
    """The default (randomized) path keeps the scale invariances to rounding level."""
    rng = np.random.default_rng(0)
    W = heavy_tailed(rng, (64, 96))
    X = rng.standard_normal((200, 96)) * 10 ** rng.uniform(0, 2, 96)
    ref = slabopt.solve(W, X, ratio=0.5, rank=4).reconstruct()
    scaled = slabopt.solve(1e3 * W, 7.0 * X, ratio=0.5, rank=4).reconstruct() / 1e3
    assert np.linalg.norm(scaled - ref) <= 1e-9 * np.linalg.norm(ref)
