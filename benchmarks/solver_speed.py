"""Speed of ``slabopt.solve`` (alternating, rank 1) with the numba row kernel against the reference
NumPy loop ("the solver's own speed").

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python -m benchmarks.solver_speed --repeats 3

* the large case of the issue: 4096×11008, rank 1, ratio 0.5, 20 iterations, ``tol=0``, each run in
  a fresh process (as the documented one-liner: the timer starts after the imports), the two
  paths alternating, after an untimed small solve that fills numba's on-disk cache;
* SmolLM2-135M's layer shapes (576×576, 192×576, 1536×576, 576×1536), same settings, in one process
  after a warm-up, the two paths alternating.

Every run checks that both paths give the same objective; the JSON (``--out``) records the times,
the objectives, the machine's load average before and after, and the thread settings.

    python -m benchmarks.solver_speed pipeline-numpy compress --method slab ...

runs ``slabopt compress`` with the change to ``llm/pipeline.py`` that docs/benchmarks.md suggests
(torch CPU float32 tensors reach ``slabopt.solve`` as NumPy views, so the row kernel applies),
without editing that file: ``slabopt.solve`` is wrapped for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ONE_RUN = """
import json, time, slabopt
from benchmarks._matrices import layer_problem
W, d = layer_problem({m}, {n})
t = time.perf_counter()
r = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, max_iter=20, tol=0, kernel={kernel!r})
print(json.dumps(dict(seconds=time.perf_counter() - t, n_iter=len(r.history), objective=r.objective)))
"""

SMOL_SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
KERNELS = ("numpy", "numba")


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return list(os.getloadavg())


def fresh_process_run(m: int, n: int, kernel: str) -> dict:
    """One timed solve in a new Python process (imports not timed, as in docs/benchmarks.md)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", ONE_RUN.format(m=m, n=n, kernel=kernel)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summary(times: list[float]) -> dict:
    """min / median of a list of seconds."""
    return dict(min=min(times), median=statistics.median(times), all=times)


def large_case(repeats: int, shape: tuple[int, int]) -> dict:
    """The issue's case in fresh processes, the two paths alternating."""
    runs: dict[str, list[dict]] = {k: [] for k in KERNELS}
    fresh_process_run(64, 128, "numba")  # compiles the kernels into numba's on-disk cache, untimed
    for _ in range(repeats):
        for kernel in KERNELS:
            before = load()
            res = fresh_process_run(*shape, kernel)
            res["load_before"], res["load_after"] = before, load()
            runs[kernel].append(res)
            print(f"{shape} {kernel}: {res['seconds']:.2f} s  f = {res['objective']:.7f}  "
                  f"load {before[0]:.2f}", flush=True)
    objectives = {k: {r["objective"] for r in v} for k, v in runs.items()}
    return dict(shape=list(shape), runs=runs, same_objective=objectives["numpy"] == objectives["numba"],
                **{k: summary([r["seconds"] for r in v]) for k, v in runs.items()})


def small_shapes(repeats: int) -> list[dict]:
    """SmolLM2's layer shapes in this process, after a warm-up solve of each path."""
    import slabopt

    from ._matrices import layer_problem

    rows = []
    for shape in SMOL_SHAPES:
        W, d = layer_problem(*shape)
        times: dict[str, list[float]] = {k: [] for k in KERNELS}
        objective = {}
        for kernel in KERNELS:
            slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, max_iter=20, tol=0, kernel=kernel)
        for _ in range(repeats):
            for kernel in KERNELS:
                t = time.perf_counter()
                r = slabopt.solve(W, col_norms=d, ratio=0.5, rank=1, max_iter=20, tol=0, kernel=kernel)
                times[kernel].append(time.perf_counter() - t)
                objective[kernel] = r.objective
        row = dict(shape=list(shape), same_objective=objective["numpy"] == objective["numba"],
                   load=load(), **{k: summary(v) for k, v in times.items()})
        ms = {k: row[k]["median"] * 1e3 for k in KERNELS}
        print(f"{shape}: numpy {ms['numpy']:.1f} ms, numba {ms['numba']:.1f} ms (medians)", flush=True)
        rows.append(row)
    return rows


def pipeline_numpy(argv: list[str]) -> int:
    """``slabopt`` CLI with torch CPU float32 tensors handed to ``slabopt.solve`` as NumPy views."""
    import torch
    from slabopt.llm import cli

    import slabopt

    solve = slabopt.solve

    def as_numpy(x):
        if isinstance(x, torch.Tensor) and x.device.type == "cpu" and x.dtype == torch.float32:
            return x.detach().numpy()
        return x

    def solve_numpy(W, X=None, **kw):
        for key in ("col_norms", "gram"):
            if key in kw:
                kw[key] = as_numpy(kw[key])
        return solve(as_numpy(W), as_numpy(X), **kw)

    slabopt.solve = solve_numpy
    return cli.main(argv)


def main(argv: list[str] | None = None) -> None:
    """Run both parts and write the JSON (or, with ``pipeline-numpy``, the wrapped CLI)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pipeline-numpy"]:
        sys.exit(pipeline_numpy(argv[1:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--small-repeats", type=int, default=10)
    p.add_argument("--shape", default="4096x11008", help="the large case, MxN")
    p.add_argument("--out", default="benchmarks/results/solver_speed.json")
    args = p.parse_args(argv)
    shape = tuple(int(x) for x in args.shape.split("x"))
    result = dict(
        machine=dict(cpus=os.cpu_count(), processor=platform.processor() or platform.machine(),
                     python=platform.python_version()),
        threads={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        load_start=load(),
        large=large_case(args.repeats, shape),
        smollm2_shapes=small_shapes(args.small_repeats),
        load_end=load(),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
