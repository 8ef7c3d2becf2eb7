"""One numerical check per statement of docs/formulation.md §6 (proofs in docs/theory.md).

Every check returns a :class:`Check`: how many cases it tried, the largest violation it saw
(a relative excess of the code's objective over a reference, so 0 or rounding level is a pass) and
the tolerance. References are independent of the code under test: brute-force enumeration,
a 50-digit mpmath SVD, grid search, random competitors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import mpmath
import numpy as np

import slabopt
from slabopt import budget, two_level_quantize
from slabopt.problem import Problem
from slabopt.solvers.alternating import binary_step, lowrank_step, outer, sparse_step

EPS = 1e-9  # relative tolerance for float64 computations


@dataclass
class Check:
    statement: str
    cases: int
    violation: float
    tol: float
    note: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.violation <= self.tol)


def rel_excess(ours: float, best: float) -> float:
    """max(0, ours − best) relative to max(|best|, tiny): how much worse than the reference."""
    return max(0.0, ours - best) / max(abs(best), 1e-300)


def problem_for(W: np.ndarray, d: np.ndarray, ratio: float = 0.5, pattern: str = "row") -> Problem:
    """A Problem for the block steps (rank-0 budget: only the sparse step reads the budget)."""
    return Problem(W=W, d=d, d_scale=1.0, budget=budget(W.shape, ratio, 0, pattern=pattern))


def sample_row(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "random":
        return rng.standard_normal(n)
    if kind == "tied":
        return rng.integers(-2, 3, n).astype(float)
    return rng.standard_t(1.5, n)  # heavy-tailed


# ---------------------------------------------------------------- Lemma 1 ---------------------


def two_level_cost(w, omega, low, high, is_high) -> float:
    level = np.where(is_high, high, low)
    return float(np.sum(omega * (w - level) ** 2))


def brute_two_partitions(w: np.ndarray, omega: np.ndarray) -> float:
    """min over ALL 2-partitions (any subsets, not only splits) of the weighted within-group SSE."""
    n = len(w)
    if n == 1:
        return 0.0
    masks = np.array(list(itertools.product((False, True), repeat=n)))  # 2^n × n

    def sse(sel):
        wt = omega * sel
        tot = wt.sum(1)
        mean = np.where(tot > 0, (wt * w).sum(1) / np.where(tot > 0, tot, 1), 0.0)
        return (wt * (w - mean[:, None]) ** 2).sum(1)

    return float(np.min(sse(masks) + sse(~masks)))


def check_lemma1(rng: np.random.Generator) -> Check:
    """Lemma 1: the split search equals enumeration of all 2-partitions, n ≤ 12, weighted too."""
    worst, cases = 0.0, 0
    for n in range(1, 13):
        for kind in ("random", "tied", "heavy"):
            for weighted in (False, True):
                for _ in range(6):
                    w = sample_row(rng, n, kind)
                    omega = rng.uniform(0.1, 3.0, n) if weighted else np.ones(n)
                    low, high, is_high = two_level_quantize(w, omega if weighted else None)
                    assert low <= high
                    ours = two_level_cost(w, omega, low, high, is_high)
                    best = brute_two_partitions(w, omega)
                    scale = float(np.sum(omega * (w - np.average(w, weights=omega)) ** 2))
                    worst = max(worst, max(0.0, ours - best) / max(scale, 1e-300))
                    cases += 1
    return Check("Lemma 1 (split search = all 2-partitions, n <= 12)", cases, worst, EPS)


def check_lemma1_grid(rng: np.random.Generator) -> Check:
    """Lemma 1 against a 801×801 grid search over (a, b) for small n."""
    worst, cases = 0.0, 0
    grid = np.linspace(-4, 4, 801)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    for n in (2, 3, 4, 5, 6):
        for _ in range(10):
            w = np.clip(rng.standard_normal(n), -3.9, 3.9)
            omega = rng.uniform(0.1, 3.0, n)
            low, high, is_high = two_level_quantize(w, omega)
            ours = two_level_cost(w, omega, low, high, is_high)
            f = sum(om * np.minimum((x - a) ** 2, (x - b) ** 2) for x, om in zip(w, omega, strict=True))
            worst = max(worst, rel_excess(ours, float(f.min())))
            cases += 1
    return Check("Lemma 1 (vs grid search over (a, b))", cases, worst, EPS)


def check_lemma1_degenerate(rng: np.random.Generator) -> Check:
    """n = 1 and all-equal rows: low = high = the (weighted) mean, cost 0."""
    worst, cases = 0.0, 0
    for n in (1, 2, 5, 9):
        for _ in range(5):
            value = rng.standard_normal()
            w = np.full(n, value)
            omega = rng.uniform(0.1, 2, n)
            low, high, is_high = two_level_quantize(w, omega)
            worst = max(
                worst, abs(low - value), abs(high - value), two_level_cost(w, omega, low, high, is_high)
            )
            cases += 1
    return Check("Lemma 1 (degenerate: n = 1, all equal)", cases, worst, 1e-12)


# ---------------------------------------------------------------- P1–P4 ------------------------


def check_p1(rng: np.random.Generator) -> Check:
    """P1: ‖(R − L⊙B)D‖ = ‖(R⊙B − L)D‖ for any signs B and column weights."""
    worst, cases = 0.0, 0
    for _ in range(500):
        m, n = rng.integers(1, 30, 2)
        R, L = rng.standard_normal((m, n)), rng.standard_normal((m, n))
        B = rng.choice([-1.0, 1.0], (m, n))
        d = 10 ** rng.uniform(-2, 2, n)
        lhs = np.linalg.norm((R - L * B) * d)
        rhs = np.linalg.norm((R * B - L) * d)
        worst = max(worst, abs(lhs - rhs) / max(lhs, 1e-300))
        cases += 1
    return Check("P1 (sign isometry)", cases, worst, 1e-12)


def check_p2(rng: np.random.Generator) -> Check:
    """P2: B = sign(R⊙L) beats all 2^12 sign patterns on 3×4; minimum Σ d²(|R| − |L|)²."""
    patterns = np.array(list(itertools.product((-1.0, 1.0), repeat=12))).reshape(-1, 3, 4)
    worst, cases = 0.0, 0
    for _ in range(100):
        R, L = rng.standard_t(2, (3, 4)), rng.standard_normal((3, 4))
        d = 10 ** rng.uniform(-1.5, 1.5, 4)
        ours = float(np.sum(((R - L * binary_step(R, L)) * d) ** 2))
        best = float(np.min(np.sum(((R - L * patterns) * d) ** 2, axis=(1, 2))))
        closed = float(np.sum(d**2 * (np.abs(R) - np.abs(L)) ** 2))
        worst = max(worst, rel_excess(ours, best), abs(ours - closed) / max(closed, 1e-300))
        cases += 1
    return Check("P2 (binary step, all sign patterns 3×4)", cases, worst, EPS)


def check_p4(rng: np.random.Generator) -> Check:
    """P4: the sparse step beats every mask of the pattern on 3×4 (row, global, 2:4)."""
    all_masks = np.array(list(itertools.product((False, True), repeat=12))).reshape(-1, 3, 4)
    worst, cases = 0.0, 0
    for pattern in ("row", "global", "2:4"):
        for _ in range(60):
            W, LB = rng.standard_t(2, (3, 4)), rng.standard_normal((3, 4))
            d = 10 ** rng.uniform(-1.5, 1.5, 4)
            prob = problem_for(W, d, ratio=rng.uniform(0.3, 0.7), pattern=pattern)
            S, mask = sparse_step(prob, LB)
            assert int(mask.sum()) == prob.budget.nnz
            k = prob.budget.nnz
            ok = all_masks.sum((1, 2)) == k
            if pattern == "row":
                ok &= np.all(all_masks.sum(2) == prob.budget.nnz_per_row, axis=1)
            if pattern == "2:4":
                ok &= np.all(all_masks.sum(2) == 2, axis=1)
            cands = all_masks[ok]
            ours = float(np.sum(((W - LB - S) * d) ** 2))
            best = float(np.min(np.sum((((W - LB) * ~cands) * d) ** 2, axis=(1, 2))))
            worst = max(worst, rel_excess(ours, best))
            cases += 1
    return Check("P4 (sparse step, all masks 3×4: row/global/2:4)", cases, worst, EPS)


def mp_best_rank(M: np.ndarray, r: int) -> float:
    """‖M − SVD_r(M)‖² from a 50-digit SVD: the sum of the trailing squared singular values."""
    with mpmath.workdps(50):
        s = mpmath.svd_r(mpmath.matrix(M.tolist()), compute_uv=False)
        vals = sorted((float(x) for x in s), reverse=True)
    return float(sum(v * v for v in vals[r:]))


def check_p3(rng: np.random.Generator) -> Check:
    """P3: the low-rank step reaches the 50-digit Eckart–Young optimum; random rank-r competitors
    never beat it."""
    worst, cases = 0.0, 0
    for _ in range(60):
        m, n = rng.integers(2, 8, 2)
        r = int(rng.integers(1, min(m, n) + 1))
        RB = rng.standard_t(2, (m, n))
        d = 10 ** rng.uniform(-1.5, 1.5, n)
        U, V, _ = lowrank_step(problem_for(RB, d), RB, r, svd="exact")
        ours = float(np.sum(((RB - outer(U, V)) * d) ** 2))
        total = float(np.sum((RB * d) ** 2))
        worst = max(worst, abs(ours - mp_best_rank(RB * d, r)) / total)
        for _ in range(10):
            s = rng.choice([1e-4, 1e-2, 1.0])
            cand = (U + s * rng.standard_normal(U.shape)) @ (V + s * rng.standard_normal(V.shape)).T
            worst = max(worst, rel_excess(ours, float(np.sum(((RB - cand) * d) ** 2))))
        cases += 1
    return Check("P3 (low-rank step vs 50-digit SVD + competitors)", cases, worst, EPS)


# ---------------------------------------------------------------- descent etc. -----------------


def random_problem(rng: np.random.Generator):
    m, n = (int(x) for x in rng.integers(2, 20, 2))
    W = rng.standard_t(rng.choice([1.5, 3.0, 30.0]), (m, n))
    d = 10 ** rng.uniform(0, 3, n)
    d[rng.random(n) < 0.1] = 0.0  # dead inputs
    if not d.any():
        d[0] = 1.0
    return W, d


def max_increase(history) -> float:
    h = np.asarray(history)
    return float(np.max(np.diff(h) / h[:-1], initial=0.0)) if len(h) > 1 else 0.0


def check_descent(rng: np.random.Generator, count: int = 3000) -> Check:
    """Descent: f is non-increasing along weighted alternating iterations (exact and randomized)."""
    worst, cases = 0.0, 0
    while cases < count:
        W, d = random_problem(rng)
        rank = int(rng.integers(1, min(W.shape) + 1))
        try:
            res = slabopt.solve(
                W,
                col_norms=d,
                ratio=float(rng.uniform(0.2, 0.8)),
                rank=rank,
                max_iter=8,
                tol=0,
                svd=str(rng.choice(["exact", "randomized"])),
                seed=int(rng.integers(1000)),
            )
        except slabopt.InfeasibleBudgetError:
            continue
        worst = max(worst, max_increase(res.history))
        cases += 1
    return Check("Descent (weighted variant, heavy tails, dead columns)", cases, worst, 1e-12)


def check_rank1_fixed_point(rng: np.random.Generator) -> Check:
    """B = sign(R), L = SVD_1(|R| D) D⁻¹ (non-negative) is a fixed point of steps 2–3."""
    worst, cases = 0.0, 0
    for _ in range(300):
        m, n = rng.integers(2, 12, 2)
        R = rng.standard_t(3, (m, n))
        d = 10 ** rng.uniform(-1, 1, n)
        prob = problem_for(R, d)
        B0 = binary_step(R, None)
        U, V, _ = lowrank_step(prob, R * B0, 1, svd="exact")
        L0 = outer(U, V)
        B1 = binary_step(R, L0)
        U1, V1, _ = lowrank_step(prob, R * B1, 1, svd="exact")
        L1 = outer(U1, V1)
        viol = float(np.mean(B1 != B0)) + float(np.linalg.norm(L1 - L0) / np.linalg.norm(L0))
        viol += float(max(0.0, -np.min(L0 * np.sign(L0.sum()))) / np.abs(L0).max())  # L0 ≥ 0
        worst = max(worst, viol)
        cases += 1
    return Check("Rank-1 fixed point (B = sign R, L = SVD_1|R|)", cases, worst, 1e-9)


def check_invariances(rng: np.random.Generator) -> Check:
    """solve(cW) = c·solve(W); scaling X changes nothing; row/column permutations commute;
    budgets are met exactly (exact SVD, random data without ties)."""
    worst, cases = 0.0, 0
    while cases < 100:
        m, n = (int(x) for x in rng.integers(6, 20, 2))
        W = rng.standard_normal((m, n))
        X = rng.standard_normal((2 * n, n)) * 10 ** rng.uniform(0, 2, n)
        rank = int(rng.integers(1, 3))
        ratio = 0.3
        kw = dict(ratio=ratio, rank=rank, svd="exact", max_iter=6, tol=0)
        try:
            base = slabopt.solve(W, X, **kw)
        except slabopt.InfeasibleBudgetError:
            continue
        ref = base.reconstruct()
        norm = np.linalg.norm(ref)
        c = float(10 ** rng.uniform(-3, 3))
        worst = max(worst, np.linalg.norm(slabopt.solve(c * W, X, **kw).reconstruct() - c * ref) / (c * norm))
        worst = max(worst, np.linalg.norm(slabopt.solve(W, c * X, **kw).reconstruct() - ref) / norm)
        p, q = rng.permutation(m), rng.permutation(n)
        perm = slabopt.solve(W[p][:, q], X[:, q], **kw).reconstruct()
        worst = max(worst, np.linalg.norm(perm - ref[p][:, q]) / norm)
        worst = max(worst, float(base.sparse.nnz != base.budget.nnz), float(base.ratio < ratio))
        cases += 1
    return Check("Invariances (scale W, scale X, permutations, exact budget)", cases, worst, 1e-8)


def paper_history(W: np.ndarray, d: np.ndarray, ratio: float, rank: int) -> list[float]:
    res = slabopt.solve(
        W, col_norms=d, ratio=ratio, rank=rank, variant="paper", svd="exact", max_iter=20, tol=0
    )
    return res.history


def search_paper_counterexample(rng: np.random.Generator, count: int = 3000) -> tuple[Check, dict]:
    """Search for an increase of f along the ``paper`` variant (unweighted SVD step).

    Not a pass/fail statement: a found increase is a counterexample to descent for that variant.
    Returns the largest relative increase and the smallest problem (entries rounded to 3 decimals,
    re-checked after rounding) that shows one.
    """
    worst, found, cases = 0.0, None, 0
    while cases < count:
        m, n = (int(x) for x in rng.integers(2, 8, 2))
        W = rng.standard_t(1.5, (m, n))
        d = 10 ** rng.uniform(0, 4, n)
        rank = int(rng.integers(1, min(m, n) + 1))
        ratio = float(np.round(rng.uniform(0.05, 0.7), 2))
        try:
            inc = max_increase(paper_history(W, d, ratio, rank))
        except slabopt.InfeasibleBudgetError:
            continue
        cases += 1
        worst = max(worst, inc)
        if inc > 1e-6 and (found is None or W.size < found["W"].size):
            Wr, dr = np.round(W, 3), np.round(d, 3)
            hist = paper_history(Wr, dr, ratio, rank)
            if max_increase(hist) > 1e-6:
                found = {"W": Wr, "d": dr, "ratio": ratio, "rank": rank, "history": hist}
    note = "counterexample found" if found is not None else "no increase found"
    return Check(
        "paper variant: search for a descent counterexample", cases, worst, np.inf, note
    ), found or {}


def all_checks(seed: int = 0) -> list[Check]:
    rng = np.random.default_rng(seed)
    checks = [
        check_lemma1(rng),
        check_lemma1_grid(rng),
        check_lemma1_degenerate(rng),
        check_p1(rng),
        check_p2(rng),
        check_p3(rng),
        check_p4(rng),
        check_descent(rng),
        check_rank1_fixed_point(rng),
        check_invariances(rng),
    ]
    paper, _ = search_paper_counterexample(rng)
    checks.append(paper)
    return checks
