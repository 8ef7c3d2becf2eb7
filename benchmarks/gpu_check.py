"""The GPU numbers in one command, for the day a CUDA machine is available.

    python -m benchmarks.gpu_check --out benchmarks/results/gpu_check.json

On one CUDA GPU (H100/H200 class, a CUDA build of torch, ``triton==3.9.0`` from the ``gpu`` extra)
this runs, each step under its own time limit inside a total budget (default 450 s, so the whole
command stays under 8 minutes), in this order:

1. ``gpu_tests``: ``pytest -m gpu -q`` in a subprocess (pass / fail counts, the tail of its output);
2. ``solve_speed``: ``slabopt.solve`` (alternating, rank 1 and 64, 20 iterations, ``tol=0``) on a
   4096×11008 float32 layer (``benchmarks/_matrices.py``) with torch CUDA tensors, against one CPU
   thread (in a fresh process: NumPy arrays, which take the numba row kernel, and torch CPU
   tensors), the CPU timed on a few iterations and compared per iteration;
3. ``smollm2``: ``slabopt compress --device cuda`` of SmolLM2-135M with the quick calibration
   (2048 tokens in windows of 256) into a temporary folder, per-block times from its log, then
   ``slabopt eval --device cuda`` (perplexity on 2048 test tokens);
4. ``triton_forward``: the Triton forward of a compressed layer (``llm/triton_forward.py``) at about
   8 bits per weight against ``torch.nn.functional.linear`` in bfloat16, on SmolLM2's and
   Llama-7B's layer shapes at batch 1, 8 and 64 (CUDA events, median of 25 runs after warm-up),
   with the kernel's error against the dense reconstruction and the peak device memory;
5. ``triton_tests``: only with time left, ``tests/test_llm_triton.py`` (without its hypothesis
   test), which on CUDA compiles the kernel for every stored format instead of interpreting it.

A failing step is recorded with its traceback and the next step runs; the JSON is rewritten after
every step, so a run cut short still leaves what it measured. At the end the script prints one
Markdown table per step (also written next to the JSON as ``.md``) and whether the two targets
are met: the Triton forward at batch 1 on 4096×11008 ≥ 1.5× faster than bf16 ``F.linear``, and the
rank-1 solve ≥ 10× faster per iteration than one CPU thread (the faster of the two CPU paths).

``--cpu-stub`` runs the same logic on the CPU with tiny shapes (the Triton kernel in its CPU
interpreter, the pytest steps skipped, the model step on ``--model DIR`` if given): what
tests/test_gpu_check_script.py runs. The device calls sit behind :class:`CudaDevice` /
:class:`CpuStub`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._matrices import layer_problem

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "slabopt-gpu-check/1"
STATUSES = ("ok", "failed", "timeout", "skipped")
SOLVE_KW = dict(ratio=0.5, method="alternating", tol=0.0, seed=0)
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "NUMBA_NUM_THREADS")}
SMOL_SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536))
LLAMA_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008))


# ----------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """What the steps run on: the full GPU sizes (:data:`FULL`) or tiny CPU ones (:data:`STUB`)."""

    solve_shape: tuple[int, int] = (4096, 11008)
    solve_ranks: tuple[int, ...] = (1, 64)
    solve_iters: int = 20
    cpu_iters: int = 3  # CPU iterations timed (per-iteration time from the 2nd on)
    layer_shapes: tuple[tuple[int, int], ...] = SMOL_SHAPES + LLAMA_SHAPES
    batches: tuple[int, ...] = (1, 8, 64)
    runs: int = 25
    warmup: int = 3
    layer_ratio: float = 0.5  # 16-bit values and a bitmask: 16·(1 − 0.5) = 8 bits per weight on disk
    target_shape: tuple[int, int] = (4096, 11008)
    calib_tokens: int = 2048
    seqlen: int = 256
    eval_tokens: int = 2048
    compress_iters: int = 20
    model: str | None = None  # None: the shipped SmolLM2-135M
    pytest: bool = True  # the pytest steps run (not in the CPU stub)


FULL = Sizes()
STUB = Sizes(solve_shape=(64, 160), solve_ranks=(1, 4), solve_iters=4, cpu_iters=3,
             layer_shapes=((40, 72), (24, 45)), runs=3, warmup=1, target_shape=(40, 72),
             calib_tokens=32, seqlen=16, eval_tokens=32, compress_iters=1, pytest=False)


# ----------------------------------------------------------------------------- the device
class Timer(Protocol):
    def start(self) -> None: ...

    def stop(self) -> float: ...


class Device(Protocol):
    """The device calls the steps make: ``name`` is the torch device string."""

    name: str

    def sync(self) -> None: ...

    def timer(self) -> Timer: ...

    def max_memory(self) -> int | None: ...

    def reset_memory(self) -> None: ...


class _WallTimer:
    """Seconds of wall time between :meth:`start` and :meth:`stop`."""

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def stop(self) -> float:
        return time.perf_counter() - self.t0


class _CudaTimer:
    """Seconds between two CUDA events recorded on the current stream."""

    def __init__(self) -> None:
        import torch

        self.a = torch.cuda.Event(enable_timing=True)
        self.b = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self.a.record()

    def stop(self) -> float:
        self.b.record()
        self.b.synchronize()
        return self.a.elapsed_time(self.b) / 1e3


class CudaDevice:
    """The current CUDA device: ``torch.cuda`` synchronisation, events and memory statistics."""

    name = "cuda"

    def sync(self) -> None:
        import torch

        torch.cuda.synchronize()

    def timer(self) -> Timer:
        return _CudaTimer()

    def max_memory(self) -> int | None:
        import torch

        return int(torch.cuda.max_memory_allocated())

    def reset_memory(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats()


class CpuStub:
    """The CPU standing in for the GPU: wall-clock timers, nothing to synchronise, no memory counter."""

    name = "cpu"

    def sync(self) -> None:
        return None

    def timer(self) -> Timer:
        return _WallTimer()

    def max_memory(self) -> int | None:
        return None

    def reset_memory(self) -> None:
        return None


# ----------------------------------------------------------------------------- the step runner
class StepTimeout(BaseException):
    """A step ran past its time limit (raised by SIGALRM in the main thread). Not an ``Exception``:
    a step's own ``except Exception`` (one failing shape, say) lets it pass."""


class StepFailed(Exception):
    """A step measured what it could but its check failed (recorded as "failed")."""


class StepSkipped(Exception):
    """A step that does not apply here (recorded as "skipped" with the reason)."""


class Budget:
    """The seconds left of a total budget, on ``clock`` (``time.monotonic``; a fake one in tests)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.seconds = seconds
        self.deadline = clock() + seconds

    def left(self) -> float:
        return self.deadline - self.clock()


@dataclass
class Context:
    """What a step gets: the device, the sizes, the dict it fills as it goes (kept when it fails or
    times out) and its own deadline on the budget's clock."""

    device: Device
    sizes: Sizes
    result: dict
    deadline: float
    clock: Callable[[], float] = time.monotonic

    def left(self) -> float:
        """Seconds left to this step."""
        return self.deadline - self.clock()


@dataclass
class Step:
    """A named step: ``func(ctx)`` runs for at most ``limit_s`` and starts only with ``min_s`` left."""

    name: str
    title: str
    func: Callable[[Context], None]
    limit_s: float
    min_s: float


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`StepTimeout` in the main thread after ``seconds`` (SIGALRM); elsewhere, or
    without ``setitimer``, no limit."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise StepTimeout(f"time limit of {seconds:.1f} s reached")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_step(step: Step, budget: Budget, device: Device, sizes: Sizes) -> dict:
    """Run one step within the budget; its record: status (ok / failed / timeout / skipped),
    seconds, limit, what it measured (``result``) and the traceback text of a failure (``error``)."""
    left = budget.left()
    rec: dict = {"title": step.title, "status": "skipped", "seconds": 0.0, "limit_s": None,
                 "result": {}, "error": None}
    if left < step.min_s:
        rec["error"] = f"time budget: {left:.0f} s left, the step needs at least {step.min_s:.0f} s"
        return rec
    limit = min(step.limit_s, left)
    rec["limit_s"] = round(limit, 1)
    ctx = Context(device, sizes, rec["result"], budget.clock() + limit, budget.clock)
    t0 = time.perf_counter()
    try:
        with time_limit(limit):
            step.func(ctx)
        rec["status"] = "ok"
    except StepSkipped as exc:
        rec["status"], rec["error"] = "skipped", str(exc)
    except StepTimeout:
        rec["status"] = "timeout"
        rec["error"] = f"stopped at its limit of {limit:.0f} s\n" + traceback.format_exc()
    except Exception:
        rec["status"], rec["error"] = "failed", traceback.format_exc()
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def run_all(steps: list[Step], budget: Budget, device: Device, sizes: Sizes, record: dict,
            write: Callable[[dict], None]) -> dict:
    """Run the steps in order into ``record["steps"]``, calling ``write(record)`` before the first
    and after every step (a partial JSON survives a crash or a kill)."""
    write(record)
    for step in steps:
        print(f"[gpu_check] {step.name}: {step.title} ({budget.left():.0f} s of budget left)", flush=True)
        record["steps"][step.name] = rec = run_step(step, budget, device, sizes)
        print(f"[gpu_check] {step.name}: {rec['status']} in {rec['seconds']:.1f} s", flush=True)
        if rec["error"]:
            print(_indent(rec["error"][-2000:]), flush=True)
        record["elapsed_s"] = round(budget.seconds - budget.left(), 1)
        record["targets"] = evaluate_targets(record, sizes)
        write(record)
    record["complete"] = True
    write(record)
    return record


def _indent(text: str) -> str:
    """``text`` indented by four spaces (for the console)."""
    return "\n".join("    " + line for line in text.splitlines())


# ----------------------------------------------------------------------------- subprocesses
def _pump(stream: Any, tag: str, lines: list, t0: float) -> None:
    """Append (seconds since ``t0``, tag, line) for each line of ``stream`` as it arrives."""
    for line in stream:
        lines.append((time.perf_counter() - t0, tag, line.rstrip("\n")))


def run_command(cmd: list[str], timeout: float, lines: list | None = None,
                env: dict | None = None) -> int | None:
    """Run ``cmd`` from the repository root in its own process group, its stdout and stderr lines
    collected into ``lines`` with their arrival times (as (seconds, "out" | "err", text)); kill the
    group after ``timeout`` seconds (or on any exception here). The return code, None if killed."""
    lines = [] if lines is None else lines
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True)
    pumps = [threading.Thread(target=_pump, args=(s, tag, lines, t0), daemon=True)
             for s, tag in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for p in pumps:
        p.start()
    try:
        rc: int | None = proc.wait(timeout=max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in pumps:
            p.join(5)
    return rc


def text_of(lines: list, tag: str | None = None, tail: int | None = None) -> str:
    """The collected lines of one stream (``tag``) or both, joined; the last ``tail`` characters."""
    text = "\n".join(s for _, t, s in lines if tag is None or t == tag)
    return text if tail is None else text[-tail:]


# ----------------------------------------------------------------------------- step 1: pytest
COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)\b")


def parse_pytest_summary(text: str) -> dict[str, int]:
    """The counts of pytest's last summary line ("3 passed, 1 skipped, 5 deselected in 2.1s");
    "error"/"warning" are counted as "errors"/"warnings". Empty if there is none."""
    for line in reversed(text.splitlines()):
        found = COUNT.findall(line)
        if found and re.search(r"\bin [\d.]+s", line):
            counts: dict[str, int] = {}
            for n, word in found:
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[key] = counts.get(key, 0) + int(n)
            return counts
    return {}


VERBOSE = re.compile(r"::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_pytest_verbose(text: str) -> dict[str, int]:
    """Counts of the per-test outcome lines of ``pytest -v`` ("tests/x.py::test_a PASSED [ 5%]"),
    for a run stopped before its summary line."""
    names = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped",
             "XFAIL": "xfailed", "XPASS": "xpassed"}
    counts: dict[str, int] = {}
    for word in VERBOSE.findall(text):
        counts[names[word]] = counts.get(names[word], 0) + 1
    return counts


def pytest_step(ctx: Context, args: list[str], need_pass: bool) -> None:
    """``python -m pytest ARGS`` with the step's time left; record its counts and the tail of its
    output; fail if it timed out, failed or (``need_pass``) passed nothing."""
    if not ctx.sizes.pytest:
        raise StepSkipped("CPU stub: the pytest steps need a CUDA device")
    cmd = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"]
    lines: list = []
    ctx.result["command"] = cmd[1:]
    try:
        rc = run_command(cmd, ctx.left() - 5, lines)
    finally:
        ctx.result["output"] = text_of(lines, tail=6000)
    counts = parse_pytest_summary(text_of(lines, "out")) or parse_pytest_verbose(text_of(lines, "out"))
    ctx.result.update(returncode=rc, counts=counts, cut_short=rc is None)
    if rc is None:
        raise StepTimeout(f"pytest ran past the step's time limit and was stopped; so far: {counts}")
    if rc != 0 or counts.get("failed") or counts.get("errors"):
        raise StepFailed(f"pytest exited with {rc}: {counts}")
    if need_pass and not counts.get("passed"):
        raise StepFailed(f"no test passed (is CUDA visible to pytest?): {counts}")


def step_gpu_tests(ctx: Context) -> None:
    """``pytest -m gpu -q`` (with the reasons of skips and failures)."""
    pytest_step(ctx, ["-m", "gpu", "-q", "-rfEs"], need_pass=True)


def step_triton_tests(ctx: Context) -> None:
    """tests/test_llm_triton.py without its hypothesis test: on CUDA the kernel compiled for every
    stored format, rank and layout those tests build (the interpreter's checks, on the GPU)."""
    pytest_step(ctx, ["tests/test_llm_triton.py", "-v", "-rfE", "-k", "not property"], need_pass=True)


# ----------------------------------------------------------------------------- step 2: solve
def iteration_times(t0: float, stamps: list[float], t1: float) -> dict:
    """Seconds of a solve from its start ``t0``, the times of its iteration callbacks and its end
    ``t1``: total, per iteration (mean over the iterations after the first, which also pays the
    setup), the first iteration, and what follows the last (packing the result)."""
    n = len(stamps)
    if n == 0:
        return {"total_s": t1 - t0, "n_iter": 0, "per_iter_s": None, "first_iter_s": None,
                "after_last_s": None}
    per = (stamps[-1] - stamps[0]) / (n - 1) if n >= 2 else stamps[0] - t0
    return {"total_s": t1 - t0, "n_iter": n, "per_iter_s": per, "first_iter_s": stamps[0] - t0,
            "after_last_s": t1 - stamps[-1]}


def projected_total(times: dict, iters: int) -> float | None:
    """The total of ``iters`` iterations from :func:`iteration_times` of fewer: first + (iters − 1)
    per iteration + the packing after the last."""
    if times.get("per_iter_s") is None:
        return None
    return times["first_iter_s"] + (iters - 1) * times["per_iter_s"] + times["after_last_s"]


def time_solve(dev: Device, W: Any, d: Any, rank: int, iters: int) -> dict:
    """One timed ``slabopt.solve`` (alternating, ratio 0.5, ``tol=0``) of W with column norms d on
    W's device: :func:`iteration_times` (synchronised at each iteration), the peak device memory,
    the objective and the relative error."""
    import slabopt

    stamps: list[float] = []

    def stamp(iteration: int, objective: float) -> None:
        dev.sync()
        stamps.append(time.perf_counter())

    dev.reset_memory()
    dev.sync()
    t0 = time.perf_counter()
    res = slabopt.solve(W, col_norms=d, rank=rank, max_iter=iters, callback=stamp, **SOLVE_KW)
    dev.sync()
    t1 = time.perf_counter()
    return {**iteration_times(t0, stamps, t1), "peak_bytes": dev.max_memory(),
            "objective": float(res.objective), "relative_error": float(res.relative_error)}


def warm_up(dev: Device, W: Any, d: Any, ranks: tuple[int, ...] | list[int]) -> None:
    """Untimed 2-iteration solves of W's top-left 256×704 corner at each rank: library handles,
    numba's compiled kernels, the allocator's first blocks."""
    m, n = min(W.shape[0], 256), min(W.shape[1], 704)
    corner = W[:m, :n]
    corner = corner.copy() if isinstance(corner, np.ndarray) else corner.contiguous()
    for rank in ranks:
        time_solve(dev, corner, d[:n], rank, 2)


def cpu_baseline_main(spec_json: str) -> int:
    """``python -m benchmarks.gpu_check cpu-baseline JSON``: one CPU thread (the caller sets the
    thread variables), one JSON line per (rank, library) as soon as it is measured."""
    import torch

    torch.set_num_threads(1)
    spec = json.loads(spec_json)
    W, d = layer_problem(*spec["shape"])
    data = {"numpy": (W, d), "torch": (torch.from_numpy(W), torch.from_numpy(d))}
    for lib in spec["libs"]:
        warm_up(CpuStub(), *data[lib], spec["ranks"])
    for rank in spec["ranks"]:
        for lib in spec["libs"]:
            m = time_solve(CpuStub(), *data[lib], rank, spec["iters"])
            print(json.dumps({"lib": lib, "rank": rank, **m}), flush=True)
    return 0


def cpu_baseline(ctx: Context, libs: tuple[str, ...] = ("numpy", "torch")) -> dict:
    """The CPU solves of the step's shape and ranks in a fresh one-thread process, into
    ``{lib: {rank: times}}`` as they arrive (partial if the step's time runs out)."""
    sz = ctx.sizes
    spec = {"shape": list(sz.solve_shape), "ranks": list(sz.solve_ranks), "iters": sz.cpu_iters,
            "libs": list(libs)}
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "cpu-baseline", json.dumps(spec)]
    lines: list = []
    cpu: dict = ctx.result.setdefault("cpu", {})
    try:
        rc = run_command(cmd, ctx.left() - 5, lines, env=ONE_THREAD)
    finally:
        for _, tag, text in lines:
            with contextlib.suppress(ValueError, KeyError):  # a line cut short by a kill
                m = json.loads(text) if tag == "out" and text.startswith("{") else None
                if m is not None:
                    cpu.setdefault(m.pop("lib"), {})[str(m.pop("rank"))] = m
    if rc != 0:
        ctx.result["cpu_error"] = text_of(lines, "err", tail=3000) or f"stopped (return code {rc})"
    return cpu


def solve_speedups(gpu: dict, cpu: dict, rank: str, iters: int) -> dict:
    """Per-iteration speed-ups of the device over each CPU path at ``rank`` and over the faster
    one, and the device's 20-iteration total against the CPU's projected total."""
    g = gpu.get(rank, {}).get("per_iter_s")
    out: dict = {}
    per = {lib: v[rank]["per_iter_s"] for lib, v in cpu.items() if v.get(rank, {}).get("per_iter_s")}
    for lib, c in per.items():
        out[f"vs_cpu_{lib}"] = c / g if g else None
    if per and g:
        best = min(per, key=per.get)
        out.update(best_cpu=best, vs_best_cpu=per[best] / g)
        total = projected_total(cpu[best][rank], iters)
        out["total_vs_best_cpu"] = total / gpu[rank]["total_s"] if total else None
        out["cpu_projected_total_s"] = total
    return out


def step_solve_speed(ctx: Context) -> None:
    """``slabopt.solve`` on the device (warm-up, then each rank) against one CPU thread."""
    import torch

    sz, dev = ctx.sizes, ctx.device
    m, n = sz.solve_shape
    ctx.result.update(
        shape=[m, n], ranks=list(sz.solve_ranks), max_iter=sz.solve_iters, **SOLVE_KW,
        activations="column norms d (log-normal, benchmarks/_matrices.py) passed as col_norms: the "
                    "alternating solver reads only d_j = sqrt((XᵀX)_jj) of a calibration Gram",
        cpu_note=f"CPU: a fresh process, one thread (torch.set_num_threads(1), OMP/OPENBLAS/MKL/NUMBA "
                 f"threads 1), after untimed warm-up solves, {sz.cpu_iters} iterations timed (the "
                 f"device: {sz.solve_iters}); per iteration = mean time between "
                 f"iteration callbacks after the first; the {sz.solve_iters}-iteration CPU total is "
                 "projected as first + (n − 1)·per-iteration + packing. numpy = NumPy arrays (the "
                 "numba row kernel), torch = torch CPU tensors",
        device={})
    W, d = layer_problem(m, n)
    Wg, dg = torch.from_numpy(W).to(dev.name), torch.from_numpy(d).to(dev.name)
    warm_up(dev, Wg, dg, sz.solve_ranks)
    for rank in sz.solve_ranks:
        ctx.result["device"][str(rank)] = time_solve(dev, Wg, dg, rank, sz.solve_iters)
    del Wg, dg
    cpu = cpu_baseline(ctx)
    ctx.result["speedup"] = {str(r): solve_speedups(ctx.result["device"], cpu, str(r), sz.solve_iters)
                             for r in sz.solve_ranks}
    if "cpu_error" in ctx.result:
        raise StepFailed("the CPU baseline did not finish: " + ctx.result["cpu_error"][-300:])


# ----------------------------------------------------------------------------- step 3: SmolLM2
BLOCK_LINE = re.compile(r"^block\s+(\d+)\s+(\S+)\s+\(.*?\)\s+ratio\s+\S+\s+rel\.err\s+\S+\s+iters\s+(\d+)"
                        r"\s+([\d.]+)s\s*$")


def block_times(lines: list) -> list[dict]:
    """Per decoder block, from the per-layer lines of ``slabopt compress --verbose`` (printed when
    the block is on disk) and their arrival times: layers, the solvers' seconds (sum of the
    logged per-layer times), and the wall seconds since the previous block was logged
    (calibration forward + solves + writing; None for the first block)."""
    blocks: dict[int, dict] = {}
    for t, tag, text in lines:
        mt = BLOCK_LINE.match(text.strip()) if tag == "out" else None
        if mt:
            b = int(mt[1])
            row = blocks.setdefault(b, {"block": b, "layers": 0, "solve_s": 0.0, "logged_at_s": round(t, 3)})
            row["layers"] += 1
            row["solve_s"] = round(row["solve_s"] + float(mt[4]), 3)
    rows = [blocks[b] for b in sorted(blocks)]
    for prev, row in zip([None, *rows], rows, strict=False):
        row["wall_s"] = None if prev is None else round(row["logged_at_s"] - prev["logged_at_s"], 3)
    return rows


def manifest_summary(folder: Path) -> dict:
    """Method, settings, bits per weight of the linear layers (every stored bit) and the compression
    seconds that ``manifest.json`` of a compressed folder records."""
    man = json.loads((folder / "manifest.json").read_text())
    layers = man.get("layers", [])
    weights = sum(e["shape"][0] * e["shape"][1] for e in layers)
    s = man.get("settings", {})
    return {"complete": man.get("complete"), "blocks": man.get("num_blocks"), "layers": len(layers),
            "bits_per_weight": sum(e["bits"] for e in layers) / weights if weights else None,
            "compress_seconds": man.get("compress_seconds"), "sizes": man.get("sizes"),
            "settings": {k: s.get(k) for k in ("method", "solver", "ratio", "rank", "max_iter", "positions",
                                                "sparse_bits", "windows", "seqlen", "store_dtype")}}


def compress_command(ctx: Context, out: Path) -> list[str]:
    """``slabopt compress`` of the step's model (the shipped SmolLM2-135M unless ``--model``) with
    slab at ratio 0.5 (8 bits per weight on disk), rank 1, the quick calibration, on the device."""
    sz = ctx.sizes
    model = [] if sz.model is None else ["--model", sz.model]
    return [sys.executable, "-m", "slabopt.llm", "compress", *model, "--method", "slab", "--ratio", "0.5",
            "--rank", "1", "--seed", "0", "--max-iter", str(sz.compress_iters), "--calib-tokens",
            str(sz.calib_tokens), "--seqlen", str(sz.seqlen), "--device", ctx.device.name, "--verbose",
            "--out", str(out)]


def run_compress(ctx: Context, out: Path) -> None:
    """Compress into ``out``; record the command, its seconds, per-block times and the manifest."""
    cmd = compress_command(ctx, out)
    lines: list = []
    rec = ctx.result.setdefault("compress", {"command": cmd[1:]})
    t0 = time.perf_counter()
    try:
        rc = run_command(cmd, ctx.left() - 25, lines)
    finally:
        rec.update(seconds=round(time.perf_counter() - t0, 2), blocks=block_times(lines),
                   summary=[s for _, t, s in lines if t == "out" and not BLOCK_LINE.match(s.strip())][-6:],
                   stderr_tail=text_of(lines, "err", tail=2000))
    rec["returncode"] = rc
    if rc != 0:
        raise StepFailed(f"compress returned {rc}:\n" + text_of(lines, tail=3000))
    rec["manifest"] = manifest_summary(out)


def run_eval(ctx: Context, out: Path) -> None:
    """``slabopt eval --json`` of the folder on the device; record the perplexity and seconds."""
    sz = ctx.sizes
    cmd = [sys.executable, "-m", "slabopt.llm", "eval", str(out), "--device", ctx.device.name,
           "--tokens", str(sz.eval_tokens), "--seqlen", str(sz.seqlen), "--json"]
    lines: list = []
    rec = ctx.result.setdefault("eval", {"command": cmd[1:]})
    t0 = time.perf_counter()
    rc = run_command(cmd, ctx.left() - 3, lines)
    rec.update(returncode=rc, seconds=round(time.perf_counter() - t0, 2))
    found = [json.loads(s) for _, t, s in lines if t == "out" and s.startswith("{")]
    if rc != 0 or not found:
        raise StepFailed(f"eval returned {rc}:\n" + text_of(lines, tail=3000))
    keep = ("perplexity", "nll", "windows", "seqlen", "tokens", "text", "eval_seconds", "method")
    rec.update({k: found[-1].get(k) for k in keep})


def step_smollm2(ctx: Context) -> None:
    """SmolLM2 compressed end to end on the device into a temporary folder, then its perplexity."""
    if ctx.sizes.model is None and ctx.device.name == "cpu":
        raise StepSkipped("CPU stub without --model: the model step needs a checkpoint folder")
    tmp = Path(tempfile.mkdtemp(prefix="slabopt-gpu-check-"))
    ctx.result.update(model=ctx.sizes.model or "SmolLM2-135M (shipped)",
                      note="compress and eval run as separate processes: their peak device memory is "
                           "not measured here")
    try:
        run_compress(ctx, tmp / "out")
        run_eval(ctx, tmp / "out")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- step 4: Triton
def time_fn(dev: Device, fn: Callable[[], Any], runs: int, warmup: int) -> dict:
    """Median and min seconds of ``runs`` timed calls of ``fn`` (each between two device timer
    marks) after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    dev.sync()
    times = []
    for _ in range(runs):
        t = dev.timer()
        t.start()
        fn()
        times.append(t.stop())
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs}


def rel_err(y: Any, ref: Any) -> float:
    """‖y − ref‖ / ‖ref‖ (Frobenius, float64)."""
    y, ref = y.double(), ref.double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


def build_layer(dev: Device, m: int, n: int, ratio: float) -> tuple[Any, dict]:
    """An m×n :class:`SLaBLinear` on the device from one alternating iteration (rank 1, ``ratio``,
    positions as the stored bitmask, float16 values; only its forward is timed), and its facts."""
    import torch
    from slabopt.llm.slablinear import SLaBLinear

    import slabopt

    W, d = layer_problem(m, n)
    t0 = time.perf_counter()
    res = slabopt.solve(torch.from_numpy(W).to(dev.name), col_norms=torch.from_numpy(d).to(dev.name),
                        ratio=ratio, rank=1, method="alternating", max_iter=1, positions="bitmask")
    mod = SLaBLinear.from_result(res, store_dtype=torch.float16).to(dev.name)
    dev.sync()
    facts = {"build_s": round(time.perf_counter() - t0, 3), "bits_per_weight": res.bits / (m * n),
             "nnz": int(res.sparse.nnz), "rank": int(res.rank), "store_dtype": "float16"}
    return mod, facts


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors among the attributes of ``obj`` (the kernel's parts)."""
    import torch

    return sum(v.numel() * v.element_size() for v in vars(obj).values() if isinstance(v, torch.Tensor))


def bench_shape(ctx: Context, m: int, n: int) -> dict:
    """One layer shape: the Triton forward and bf16 ``F.linear`` of its reconstruction at each
    batch (timings, speed-up, errors against x Ŵᵀ in float32), and the peak memory of each."""
    import torch
    import torch.nn.functional as F
    from slabopt.llm import triton_forward as tfw

    dev, sz = ctx.device, ctx.sizes
    row: dict = {"shape": [m, n], "batches": []}
    mod, facts = build_layer(dev, m, n, sz.layer_ratio)
    row.update(facts, supported=tfw.supported(mod))
    parts = tfw.prepare(mod)
    g = torch.Generator().manual_seed(0)
    xs = {b: torch.randn(b, n, generator=g).to(dev.name, torch.bfloat16) for b in sz.batches}
    dev.reset_memory()
    tri = {b: time_fn(dev, lambda x=x: tfw.slab_forward(parts, x), sz.runs, sz.warmup) for b, x in xs.items()}
    ys = {b: tfw.slab_forward(parts, x) for b, x in xs.items()}
    row["peak_bytes_triton"] = dev.max_memory()
    W32 = mod.reconstruct(torch.float32)
    refs = {b: x.float() @ W32.T for b, x in xs.items()}
    Wbf = W32.to(torch.bfloat16)
    del W32
    dev.reset_memory()
    den = {b: time_fn(dev, lambda x=x: F.linear(x, Wbf), sz.runs, sz.warmup) for b, x in xs.items()}
    row["peak_bytes_dense"] = dev.max_memory()
    row.update(parts_bytes=_tensor_bytes(parts), dense_bf16_bytes=2 * m * n)
    for b, x in xs.items():
        row["batches"].append({
            "batch": b, "triton_s": tri[b]["median_s"], "dense_bf16_s": den[b]["median_s"],
            "triton_min_s": tri[b]["min_s"], "dense_bf16_min_s": den[b]["min_s"],
            "speedup": den[b]["median_s"] / tri[b]["median_s"],
            "rel_err_triton": rel_err(ys[b], refs[b]),
            "rel_err_dense_bf16": rel_err(F.linear(x, Wbf), refs[b]),
            "forward_takes_triton": bool(mod.triton_applies(x))})
    return row


def step_triton_forward(ctx: Context) -> None:
    """Every layer shape in turn (a failing shape is recorded and the next one runs; shapes stop
    when less than a few seconds are left)."""
    from slabopt.llm import triton_forward as tfw

    if not tfw.HAVE_TRITON:
        raise StepFailed("triton is not installed (pip install -e '.[gpu]')")
    sz = ctx.sizes
    ctx.result.update(dtype="bfloat16", runs=sz.runs, warmup=sz.warmup, batches=list(sz.batches),
                      timing="CUDA events around each call (the launch overhead included, as a decoding "
                             "step sees it), median of the runs after warm-up",
                      layers_built="slabopt.solve alternating, 1 iteration, rank 1, ratio "
                                   f"{sz.layer_ratio}, positions bitmask, float16 values",
                      layers=[])
    failed = []
    for m, n in sorted(sz.layer_shapes, key=lambda s: s != sz.target_shape):  # the target's shape first
        if ctx.left() < (15 if ctx.device.name == "cuda" else 1):
            ctx.result["stopped"] = f"time budget: shapes from {m}×{n} on were not run"
            break
        try:
            ctx.result["layers"].append(bench_shape(ctx, m, n))
        except Exception:
            failed.append(f"{m}×{n}")
            ctx.result["layers"].append({"shape": [m, n], "error": traceback.format_exc()})
    if failed:
        raise StepFailed(f"shapes failed: {', '.join(failed)}")


# ----------------------------------------------------------------------------- targets
def _find(items: list, shape: tuple[int, int]) -> dict | None:
    """The measured (not failed) layer row of ``shape``, if any."""
    return next((r for r in items if r.get("shape") == list(shape) and "error" not in r), None)


def evaluate_targets(record: dict, sizes: Sizes) -> list[dict]:
    """The two targets with their measured values: met true / false, or None when not measured."""
    steps = record.get("steps", {})
    tri = (steps.get("triton_forward") or {}).get("result", {})
    row = _find(tri.get("layers", []), sizes.target_shape)
    b1 = next((b for b in (row or {}).get("batches", []) if b["batch"] == 1), None)
    solve = (steps.get("solve_speed") or {}).get("result", {})
    r1 = solve.get("speedup", {}).get(str(sizes.solve_ranks[0]), {}).get("vs_best_cpu")
    m, n = sizes.target_shape
    sm, sn = sizes.solve_shape
    targets = [
        (f"Triton forward, batch 1, {m}×{n}, ≈8 bits/weight, vs bf16 F.linear", 1.5,
         None if b1 is None else b1["speedup"]),
        (f"{sm}×{sn} rank-{sizes.solve_ranks[0]} solve per iteration, vs one CPU thread (faster path)",
         10.0, r1),
    ]
    return [{"target": name, "at_least": need, "measured": value,
             "met": None if value is None else bool(value >= need)} for name, need, value in targets]


# ----------------------------------------------------------------------------- Markdown
def fmt(x: Any, spec: str = ".3g") -> str:
    """A table cell: a number formatted by ``spec``, '–' for None or NaN, anything else as text."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec) if isinstance(x, int | float) and not isinstance(x, bool) else str(x)


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table of already formatted cells."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _md_tests(res: dict) -> str:
    """The table of a pytest step: its counts and return code."""
    c = res.get("counts", {})
    return md_table(["passed", "failed", "skipped", "errors", "deselected", "return code"],
                    [[fmt(c.get(k, 0)) for k in ("passed", "failed", "skipped", "errors", "deselected")]
                     + [fmt(res.get("returncode"))]])


def _times(x: float | None, spec: str = ".1f") -> str:
    """A speed-up cell: "2.5×", or "–"."""
    return "–" if x is None else fmt(x, spec) + "×"


def _mib(n: int | None) -> str:
    """Bytes as a MiB cell, "–" when the device keeps no count (the CPU stub)."""
    return fmt(None if n is None else n / 2**20, ".0f")


def _med_max(xs: list[float]) -> str:
    """"median / max" of seconds."""
    return f"{fmt(statistics.median(xs) if xs else None, '.2f')} / {fmt(max(xs, default=None), '.2f')}"


def _md_solve(res: dict) -> str:
    """The table of the solve step: one row per rank."""
    rows = []
    for r in map(str, res.get("ranks", [])):
        g = res.get("device", {}).get(r, {})
        cpu = {lib: v.get(r, {}).get("per_iter_s") for lib, v in res.get("cpu", {}).items()}
        sp = res.get("speedup", {}).get(r, {})
        rows.append([r, fmt(g.get("per_iter_s"), ".4f"), fmt(cpu.get("numpy"), ".3f"),
                     fmt(cpu.get("torch"), ".3f"),
                     _times(sp.get("vs_best_cpu")), fmt(g.get("total_s"), ".2f"),
                     fmt(sp.get("cpu_projected_total_s"), ".1f"), _mib(g.get("peak_bytes"))])
    shape = "×".join(map(str, res.get("shape", [])))
    return (f"`slabopt.solve` alternating, {shape}, ratio 0.5, {res.get('max_iter')} iterations, tol 0\n\n"
            + md_table(["rank", "GPU s/iter", "CPU numpy s/iter (1 thread)", "CPU torch s/iter (1 thread)",
                        "speed-up vs faster CPU", f"GPU total s ({res.get('max_iter')} it)",
                        "CPU total s (projected)", "GPU peak MiB"], rows))


def _md_smollm2(res: dict) -> str:
    """The table of the model step: size, times (per block: median / max) and perplexity."""
    c, e = res.get("compress", {}), res.get("eval", {})
    man = c.get("manifest", {})
    solve = [b["solve_s"] for b in c.get("blocks", [])]
    wall = [b["wall_s"] for b in c.get("blocks", []) if b.get("wall_s") is not None]
    return md_table(
        ["model", "bits/weight", "compress s (command)", "blocks", "solve s per block (median / max)",
         "wall s per block (median / max)", "perplexity", "eval s (command)"],
        [[res.get("model"), fmt(man.get("bits_per_weight"), ".3f"), fmt(c.get("seconds"), ".1f"),
          fmt(len(solve)), _med_max(solve), _med_max(wall), fmt(e.get("perplexity"), ".3f"),
          fmt(e.get("seconds"), ".1f")]])


def _md_triton(res: dict) -> str:
    """The table of the Triton step: one row per layer shape and batch (or its failure)."""
    rows = []
    for L in res.get("layers", []):
        shape = "×".join(map(str, L["shape"]))
        if "error" in L:
            rows.append([shape, "–", "failed: " + L["error"].strip().splitlines()[-1][:80]] + ["–"] * 6)
            continue
        mib = f"{_mib(L.get('peak_bytes_triton'))} / {_mib(L.get('peak_bytes_dense'))}"
        for b in L["batches"]:
            rows.append([shape, fmt(L["bits_per_weight"], ".2f"), b["batch"], fmt(b["triton_s"] * 1e3, ".4f"),
                         fmt(b["dense_bf16_s"] * 1e3, ".4f"), _times(b["speedup"], ".2f"),
                         fmt(b["rel_err_triton"], ".1e"), fmt(b["rel_err_dense_bf16"], ".1e"), mib])
    return md_table(["shape (out×in)", "bits/weight", "batch", "Triton ms", "bf16 F.linear ms", "speed-up",
                     "rel. err Triton", "rel. err bf16", "peak MiB Triton / dense"], rows)


FORMATTERS: dict[str, Callable[[dict], str]] = {
    "gpu_tests": _md_tests, "solve_speed": _md_solve, "smollm2": _md_smollm2, "triton_forward": _md_triton,
    "triton_tests": _md_tests}


def render_markdown(record: dict) -> str:
    """One section per step (status line, then its table) and the targets; a table that cannot be
    formatted is replaced by a note, never an exception."""
    env = record.get("environment", {})
    parts = [f"## GPU check ({record.get('mode')}, {env.get('device_name', env.get('platform'))}, torch "
             f"{env.get('torch')}, triton {env.get('triton')})"]
    for name, rec in record.get("steps", {}).items():
        parts.append(f"### {rec.get('title', name)}\n\n{rec['status']} in {fmt(rec.get('seconds'), '.1f')} s")
        if rec.get("error"):
            parts[-1] += ": " + rec["error"].strip().splitlines()[-1][:200]
        if not rec.get("result"):
            continue
        try:
            parts.append(FORMATTERS[name](rec["result"]))
        except Exception as exc:  # a half-filled record: say so, print the rest
            parts.append(f"(table not available: {type(exc).__name__}: {exc})")
    verdict = {True: "met", False: "not met", None: "not measured"}
    rows = [[t["target"], f"≥ {t['at_least']}×", _times(t["measured"], ".2f"),
             verdict[t["met"]]] for t in record.get("targets", [])]
    parts.append("### Targets\n\n" + md_table(["target", "needed", "measured", ""], rows))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- the record
def environment() -> dict:
    """Python, torch (and its CUDA), the GPU, triton, slabopt and the git commit, where available."""
    env: dict = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
                 "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    with contextlib.suppress(Exception):
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                   cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env.update(device_name=p.name, device_memory_bytes=p.total_memory,
                       capability=f"{p.major}.{p.minor}", device_count=torch.cuda.device_count())
    with contextlib.suppress(Exception):
        import triton

        env["triton"] = triton.__version__
    with contextlib.suppress(Exception):
        import slabopt

        env["slabopt"] = slabopt.__version__
    with contextlib.suppress(Exception):
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    return env


def clean(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None and tuples as lists (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def write_json(path: Path, record: dict) -> None:
    """Write the record (atomically: a temporary file replaced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean(record), indent=1, default=str) + "\n")
    os.replace(tmp, path)


def new_record(argv: list[str], mode: str, budget_s: float, sizes: Sizes) -> dict:
    """The JSON's frame before any step ran."""
    return {"schema": SCHEMA, "mode": mode, "command": ["python", "-m", "benchmarks.gpu_check", *argv],
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget_s, "elapsed_s": 0.0,
            "complete": False, "sizes": clean(vars(sizes)), "environment": environment(), "steps": {},
            "targets": evaluate_targets({}, sizes)}


STEPS = [
    Step("gpu_tests", "pytest -m gpu", step_gpu_tests, limit_s=80, min_s=20),
    Step("solve_speed", "slabopt.solve on the GPU vs one CPU thread", step_solve_speed, limit_s=130,
         min_s=30),
    Step("smollm2", "SmolLM2-135M: slabopt compress + eval on the GPU", step_smollm2, limit_s=150, min_s=40),
    Step("triton_forward", "Triton forward vs bf16 F.linear", step_triton_forward, limit_s=90, min_s=15),
    Step("triton_tests", "tests/test_llm_triton.py compiled on the GPU (time left only)", step_triton_tests,
         limit_s=120, min_s=45),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command's options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/gpu_check.json",
                   help="the JSON; the Markdown goes next to it as .md (default: %(default)s)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all steps (default: %(default)s)")
    p.add_argument("--cpu-stub", action="store_true", help="tiny shapes on the CPU, pytest steps skipped")
    p.add_argument("--model", default=None, help="checkpoint folder for the model step (default: SmolLM2)")
    p.add_argument("--steps", nargs="+", choices=[s.name for s in STEPS], default=None,
                   help="run only these steps (default: all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the steps, write the JSON and the Markdown; 0 when no step failed (time-outs and skips
    are in the JSON and the tables)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["cpu-baseline"]:
        return cpu_baseline_main(argv[1])
    args = parse_args(argv)
    if args.cpu_stub:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    sizes = replace(STUB if args.cpu_stub else FULL, model=args.model)
    out = Path(args.out)
    record = new_record(argv, "cpu-stub" if args.cpu_stub else "cuda", args.budget, sizes)
    if not args.cpu_stub and not record["environment"].get("cuda_available"):
        record["error"] = "no CUDA device visible to torch (use --cpu-stub for the CPU dry run)"
        write_json(out, record)
        print(f"[gpu_check] {record['error']}; wrote {out}", file=sys.stderr)
        return 2
    device: Device = CpuStub() if args.cpu_stub else CudaDevice()
    steps = [s for s in STEPS if args.steps is None or s.name in args.steps]
    run_all(steps, Budget(args.budget), device, sizes, record, lambda r: write_json(out, r))
    md = render_markdown(record)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"[gpu_check] wrote {out} and {out.with_suffix('.md')} in {record['elapsed_s']:.0f} s")
    return 0 if all(r["status"] != "failed" for r in record["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
