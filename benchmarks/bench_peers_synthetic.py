"""Synthetic robust-PCA benchmark against existing RPCA libraries (report §1).

M = L₀ + S₀ + G: L₀ = U Vᵀ/√32 of rank 32 (U, V standard normal), S₀ with 5% entries uniform in
[−5, 5], G = 0.01·N(0, 1); seeded (seed 0). Sizes 1024² and 4096². Methods, one thread, side by
side in one run (median wall time over ``--repeats`` runs):

* ours: ``rpca`` (PCP by inexact ALM), ``godec`` and ``oats`` (D = I, i.e. the S + L part of
  ``alternating``) at the true budget (r = 32, k = 5% of the entries, global pattern);
* PyPI ``rpca`` 0.1.6 (AccAltProj, Cai et al. 2019; n_components = 32; it centres the columns
  first, so its low-rank estimate is ``L_ + mean_``);
* ``tensorly`` ``robust_pca`` (reg_E = 2λ = 2/√max(m, n), which equals PCP's λ on a matrix);
* ``pyrpca`` 1.0.1 ``rpca_pcp_ialm`` (λ = 1/√max(m, n); 1024² only).

The full-SVD PCP solvers (ours ``rpca``, tensorly, pyrpca) run at 1024² only: at 4096² each of
their ~40-100 iterations is a dense 4096² SVD (minutes each on one thread).
Reported: relative recovery errors ‖L − L₀‖_F/‖L₀‖_F and ‖S − S₀‖_F/‖S₀‖_F, and the relative
error ‖M − P_r(L) − P_k(S)‖_F/‖M‖_F after projecting each method's output to the same (r, k)
budget (P_r: truncated SVD, P_k: k largest |entries|). Writes ``benchmarks/results/synthetic.json``.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_peers_synthetic [--sizes 1024 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

import slabopt

OUT = Path(__file__).resolve().parent / "results" / "synthetic.json"
RANK, DENSITY, NOISE, SEED = 32, 0.05, 0.01, 0


def make(n, seed=SEED):
    rng = np.random.default_rng(seed)
    L0 = rng.standard_normal((n, RANK)) @ rng.standard_normal((RANK, n)) / np.sqrt(RANK)
    S0 = np.where(rng.random((n, n)) < DENSITY, rng.uniform(-5, 5, (n, n)), 0.0)
    return L0, S0, L0 + S0 + NOISE * rng.standard_normal((n, n))


def ratio_for(n, k):
    """The ratio whose global budget at rank 32 (S + L, no B) is exactly k values."""
    bits = 16 * k + 16 * RANK * 2 * n
    return float(1 - Fraction(bits, 16 * n * n))


def ours(method, **opts):
    def run(M, k):
        ratio = ratio_for(M.shape[0], k)
        res = slabopt.solve(M, None, ratio=ratio, rank=RANK, method=method, pattern="global",
                            **opts)
        if method != "rpca":
            assert res.sparse.nnz <= k
        return res.low_rank(), res.sparse.to_dense()
    return run


def accaltproj(M, k):
    from rpca import RobustPCA

    with contextlib.redirect_stdout(io.StringIO()):
        est = RobustPCA(n_components=RANK, verbose=False).fit(M)
    return est.L_ + est.mean_, est.S_


def tensorly_rpca(M, k):
    from tensorly.decomposition import robust_pca

    lam = 1 / np.sqrt(max(M.shape))
    L, S = robust_pca(M, reg_E=2 * lam, verbose=0)
    return np.asarray(L), np.asarray(S)


def pyrpca_ialm(M, k):
    from pyrpca import rpca_pcp_ialm

    return rpca_pcp_ialm(M, 1 / np.sqrt(max(M.shape)), verbose=False)


METHODS = {
    "slabopt rpca (PCP, IALM)": (ours("rpca"), 1024),
    "slabopt godec": (ours("godec"), 4096),
    "slabopt oats (D = I)": (ours("oats"), 4096),
    "rpca 0.1.6 (AccAltProj)": (accaltproj, 4096),
    "tensorly robust_pca": (tensorly_rpca, 1024),
    "pyrpca 1.0.1 (PCP, IALM)": (pyrpca_ialm, 1024),
}


def project(L, S, k):
    P, s, Qt = np.linalg.svd(L, full_matrices=False) if L.shape[0] <= 1024 else (None, None, None)
    if P is None:  # large: the rank-r part by a randomized SVD
        from slabopt.linalg import truncated_svd

        P, s, Q = truncated_svd(L, RANK, method="randomized", power_iters=4)
        Qt = Q.T
    Lr = (P[:, :RANK] * s[:RANK]) @ Qt[:RANK]
    flat = np.abs(S).ravel()
    keep = np.argpartition(flat, flat.size - k)[flat.size - k:]
    Sk = np.zeros(S.size)
    Sk[keep] = S.ravel()[keep]
    return Lr, Sk.reshape(S.shape)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", nargs="*", default=None)
    args = ap.parse_args(argv)
    rows = json.loads(OUT.read_text())["rows"] if OUT.exists() else []
    for n in args.sizes:
        L0, S0, M = make(n)
        k = int(np.count_nonzero(S0))
        for name, (fn, max_n) in METHODS.items():
            if n > max_n or (args.methods and name not in args.methods):
                continue
            reps = args.repeats if n <= 1024 else 1
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                L, S = fn(M, k)
                times.append(time.perf_counter() - t0)
            Lr, Sk = project(L, S, k)
            row = dict(
                n=n, method=name, time_median=statistics.median(times), times=times,
                err_L=float(np.linalg.norm(L - L0) / np.linalg.norm(L0)),
                err_S=float(np.linalg.norm(S - S0) / np.linalg.norm(S0)),
                err_fit=float(np.linalg.norm(M - L - S) / np.linalg.norm(M)),
                err_budget=float(np.linalg.norm(M - Lr - Sk) / np.linalg.norm(M)),
                rank=int(np.linalg.matrix_rank(L)) if n <= 1024 else None,
                nnz=int(np.count_nonzero(S)), k=k,
            )
            rows = [r for r in rows if not (r["n"] == n and r["method"] == name)] + [row]
            print(json.dumps(row), flush=True)
            OUT.parent.mkdir(exist_ok=True)
            OUT.write_text(json.dumps(dict(
                command="OMP_NUM_THREADS=1 python -m benchmarks.bench_peers_synthetic",
                threads=os.environ.get("OMP_NUM_THREADS"), rows=rows), indent=1))


if __name__ == "__main__":
    main()
