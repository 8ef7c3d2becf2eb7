"""benchmarks/gpu_check.py, the one-command GPU check, exercised without a GPU: its step runner
(a failing step is recorded and the next one runs, the time budget and each step's limit stop
steps, the JSON is rewritten after every step), its parsers, and one ``--cpu-stub`` run of the
command on tiny shapes (the CPU stands in for the device, the Triton kernel runs in its CPU
interpreter, the model step compresses and evaluates the tiny test checkpoint).
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import gpu_check as gc

ROOT = Path(__file__).resolve().parent.parent
STUB = gc.STUB


def _strict_json(path: Path) -> dict:
    """The file as JSON, refusing NaN / Infinity (which ``json.dumps`` would write)."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _run(steps: list[gc.Step], budget: gc.Budget, tmp_path: Path) -> tuple[dict, list[dict]]:
    """run_all with the CPU stub; the record and a copy of the JSON file after each write."""
    out = tmp_path / "check.json"
    snapshots: list[dict] = []

    def write(record: dict) -> None:
        gc.write_json(out, record)
        snapshots.append(_strict_json(out))

    record = gc.new_record([], "test", budget.seconds, STUB)
    gc.run_all(steps, budget, gc.CpuStub(), STUB, record, write)
    return record, snapshots


# ------------------------------------------------------------------------------- the step runner
def test_a_failing_step_is_recorded_and_the_next_step_runs(tmp_path):
    def broken(ctx: gc.Context) -> None:
        ctx.result["measured_before_failing"] = 1.5
        raise ValueError("broken on purpose")

    def fine(ctx: gc.Context) -> None:
        ctx.result["value"] = 2

    steps = [gc.Step("broken", "a broken step", broken, 10, 0), gc.Step("fine", "a fine step", fine, 10, 0)]
    record, snapshots = _run(steps, gc.Budget(60), tmp_path)
    bad, good = record["steps"]["broken"], record["steps"]["fine"]
    assert bad["status"] == "failed"
    assert "Traceback" in bad["error"] and "ValueError: broken on purpose" in bad["error"]
    assert bad["result"] == {"measured_before_failing": 1.5}  # what it measured before failing is kept
    assert good["status"] == "ok" and good["result"] == {"value": 2} and good["error"] is None
    # written before the first step, after each step, and once more complete
    assert len(snapshots) == 4
    assert list(snapshots[1]["steps"]) == ["broken"] and not snapshots[1]["complete"]
    assert list(snapshots[2]["steps"]) == ["broken", "fine"] and snapshots[-1]["complete"]
    assert snapshots[-1]["steps"]["broken"]["error"] == bad["error"]


def test_the_time_budget_stops_the_steps_that_do_not_fit(tmp_path):
    now = [0.0]
    ran = []

    def long_step(ctx: gc.Context) -> None:
        ran.append("long")
        now[0] += 95.0  # the fake clock: this step used 95 of the 100 s

    def next_step(ctx: gc.Context) -> None:
        ran.append("next")

    steps = [gc.Step("long", "long", long_step, 200, 10), gc.Step("next", "next", next_step, 50, 10),
             gc.Step("tiny", "tiny", lambda ctx: ran.append("tiny"), 50, 1)]
    record, _ = _run(steps, gc.Budget(100, clock=lambda: now[0]), tmp_path)
    assert ran == ["long", "tiny"]  # "next" needs 10 s, 5 were left; "tiny" needs 1
    assert record["steps"]["long"]["limit_s"] == 100  # its own limit (200) cut to the budget
    skipped = record["steps"]["next"]
    assert skipped["status"] == "skipped" and skipped["error"].startswith("time budget: 5 s left")
    assert record["steps"]["tiny"]["status"] == "ok"


def test_a_step_past_its_limit_is_stopped_and_keeps_what_it_measured(tmp_path):
    def sleepy(ctx: gc.Context) -> None:
        ctx.result["first"] = 1
        time.sleep(30)

    def after(ctx: gc.Context) -> None:
        ctx.result["ran"] = True

    t0 = time.perf_counter()
    steps = [gc.Step("sleepy", "sleepy", sleepy, 0.3, 0), gc.Step("after", "after", after, 5, 0)]
    record, _ = _run(steps, gc.Budget(60), tmp_path)
    assert time.perf_counter() - t0 < 10
    rec = record["steps"]["sleepy"]
    assert rec["status"] == "timeout" and rec["result"] == {"first": 1}
    assert "StepTimeout" in rec["error"] and rec["seconds"] < 5
    assert record["steps"]["after"]["status"] == "ok"


def test_a_subprocess_past_its_timeout_is_killed():
    lines: list = []
    t0 = time.perf_counter()
    code = "import time; print('started', flush=True); time.sleep(60)"
    rc = gc.run_command([sys.executable, "-c", code], 1.0, lines)
    assert rc is None and time.perf_counter() - t0 < 10
    assert gc.text_of(lines, "out") == "started"
    assert gc.run_command([sys.executable, "-c", "raise SystemExit(3)"], 30) == 3


def test_skipped_steps_and_the_stub_device():
    dev = gc.CpuStub()
    t = dev.timer()
    t.start()
    time.sleep(0.01)
    assert t.stop() >= 0.009
    assert dev.max_memory() is None and dev.name == "cpu"
    rec = gc.run_step(gc.STEPS[0], gc.Budget(60), dev, STUB)  # pytest steps: not in the stub
    assert rec["status"] == "skipped" and "CUDA" in rec["error"]


# ------------------------------------------------------------------------------- parsers and sums
def test_parse_pytest_output():
    assert gc.parse_pytest_summary("sssssss   [100%]\n7 skipped, 1076 deselected in 3.38s\n") == {
        "skipped": 7, "deselected": 1076}
    line = "==== 2 failed, 5 passed, 1 error, 3 warnings in 10.20s ===="
    assert gc.parse_pytest_summary("x\n" + line) == {"failed": 2, "passed": 5, "errors": 1, "warnings": 3}
    assert gc.parse_pytest_summary("no summary here") == {}
    verbose = ("tests/test_llm_triton.py::test_every_rank[1-0] PASSED [  1%]\n"
               "tests/test_llm_triton.py::test_every_rank[1-1] FAILED [  2%]\n"
               "tests/test_llm_triton.py::test_every_rank[1-2] PASSED [  3%]\n")
    assert gc.parse_pytest_verbose(verbose) == {"passed": 2, "failed": 1}


def test_iteration_times_and_projection():
    times = gc.iteration_times(0.0, [3.0, 4.0, 5.0], 5.5)
    assert times == {"total_s": 5.5, "n_iter": 3, "per_iter_s": 1.0, "first_iter_s": 3.0, "after_last_s": 0.5}
    assert gc.projected_total(times, 20) == pytest.approx(3.0 + 19 * 1.0 + 0.5)
    assert gc.iteration_times(0.0, [], 1.0)["per_iter_s"] is None
    gpu = {"1": {"per_iter_s": 0.01, "total_s": 0.5}}
    cpu = {"numpy": {"1": {**times, "per_iter_s": 0.2}}, "torch": {"1": {**times, "per_iter_s": 1.0}}}
    sp = gc.solve_speedups(gpu, cpu, "1", 20)
    assert sp["best_cpu"] == "numpy"
    assert sp["vs_best_cpu"] == pytest.approx(20.0) and sp["vs_cpu_torch"] == pytest.approx(100.0)
    assert sp["cpu_projected_total_s"] == pytest.approx(3.0 + 19 * 0.2 + 0.5)
    assert gc.solve_speedups({}, cpu, "1", 20) == {"vs_cpu_numpy": None, "vs_cpu_torch": None}


def test_block_times_from_the_compress_log():
    def line(b: int, name: str, s: float) -> str:
        return f"block {b:3d} {name:22s} (576, 576)   ratio 0.5000 rel.err 0.01234 iters 20 {s:.2f}s"

    lines = [(1.0, "err", "Loading weights"), (5.0, "out", line(0, "self_attn.q_proj", 0.25)),
             (5.0, "out", line(0, "mlp.down_proj", 0.5)), (7.5, "out", line(1, "self_attn.q_proj", 1.0)),
             (7.6, "out", "compressed slab ratio 0.5, rank 1: 8 bits per weight -> out")]
    rows = gc.block_times(lines)
    assert [r["block"] for r in rows] == [0, 1] and [r["layers"] for r in rows] == [2, 1]
    assert rows[0]["solve_s"] == pytest.approx(0.75) and rows[0]["wall_s"] is None
    assert rows[1]["wall_s"] == pytest.approx(2.5)


def test_targets_and_markdown_of_a_half_filled_record():
    m, n = STUB.target_shape
    record = {"mode": "test", "steps": {
        "triton_forward": {"title": "t", "status": "ok", "seconds": 1.0, "error": None, "result": {
            "layers": [{"shape": [m, n], "bits_per_weight": 8.0, "peak_bytes_triton": 2**21,
                        "peak_bytes_dense": None, "batches": [
                            {"batch": 1, "triton_s": 1e-5, "dense_bf16_s": 2e-5, "speedup": 2.0,
                             "rel_err_triton": 1e-7, "rel_err_dense_bf16": 3e-3}]},
                       {"shape": [3, 4], "error": "Traceback ...\nRuntimeError: out of memory"}]}},
        "solve_speed": {"title": "s", "status": "timeout", "seconds": 9.0, "error": "stopped\nStepTimeout",
                        "result": {"ranks": [1, 4], "device": {"1": {"per_iter_s": 0.01}}}},
        "smollm2": {"title": "m", "status": "failed", "seconds": 3.0, "error": "Traceback\nStepFailed: x",
                    "result": {"compress": {"blocks": []}}}}}
    targets = gc.evaluate_targets(record, STUB)
    assert [t["met"] for t in targets] == [True, None]
    record["targets"] = targets
    md = gc.render_markdown(record)
    assert "| 40×72 | 8.00 | 1 | 0.0100 | 0.0200 | 2.00× |" in md
    assert "failed: RuntimeError: out of memory" in md
    assert "timeout in 9.0 s: StepTimeout" in md and "| met |" in md and "| not measured |" in md
    assert gc.clean({"a": math.nan, "b": (1, math.inf)}) == {"a": None, "b": [1, None]}


# ------------------------------------------------------------------------------- the command
def test_cpu_stub_run_of_the_command(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("triton")
    from ._llm import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "res" / "gpu_check.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu-stub", "--model", str(ckpt),
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rec = _strict_json(out)
    assert rec["schema"] == gc.SCHEMA and rec["mode"] == "cpu-stub" and rec["complete"]
    assert set(rec) >= {"command", "started", "budget_s", "elapsed_s", "sizes", "environment", "steps",
                        "targets"}
    assert list(rec["steps"]) == [s.name for s in gc.STEPS]
    for r in rec["steps"].values():
        assert set(r) == {"title", "status", "seconds", "limit_s", "result", "error"}
        assert r["status"] in gc.STATUSES
    steps = rec["steps"]
    assert steps["gpu_tests"]["status"] == steps["triton_tests"]["status"] == "skipped"
    assert {k: steps[k]["status"] for k in ("solve_speed", "smollm2", "triton_forward")} == dict.fromkeys(
        ("solve_speed", "smollm2", "triton_forward"), "ok")

    solve = steps["solve_speed"]["result"]
    for rank in ("1", "4"):
        assert solve["device"][rank]["n_iter"] == STUB.solve_iters and solve["device"][rank]["per_iter_s"] > 0
        assert {lib: solve["cpu"][lib][rank]["n_iter"] for lib in ("numpy", "torch")} == {
            "numpy": STUB.cpu_iters, "torch": STUB.cpu_iters}
        assert solve["speedup"][rank]["vs_best_cpu"] > 0
    model = steps["smollm2"]["result"]
    assert [b["layers"] for b in model["compress"]["blocks"]] == [7, 7]
    assert model["compress"]["manifest"]["bits_per_weight"] == pytest.approx(8.0, abs=0.1)
    assert 1 < model["eval"]["perplexity"] < 1000

    layers = steps["triton_forward"]["result"]["layers"]
    assert [L["shape"] for L in layers] == [list(s) for s in STUB.layer_shapes]
    for L in layers:
        assert L["supported"] and L["bits_per_weight"] == pytest.approx(8.0, abs=0.1)
        assert [b["batch"] for b in L["batches"]] == list(STUB.batches)
        for b in L["batches"]:
            assert b["rel_err_triton"] < 1e-5 and 1e-4 < b["rel_err_dense_bf16"] < 2e-2
            assert b["triton_s"] > 0 and b["dense_bf16_s"] > 0
    assert [t["met"] in (True, False) for t in rec["targets"]] == [True, True]
    md = out.with_suffix(".md").read_text()
    assert "### Targets" in md and "| shape (out×in) |" in md and md in run.stdout
    snapshot = copy.deepcopy(rec)
    assert gc.render_markdown(snapshot) == md


def test_without_cuda_the_command_says_so_and_writes_the_json(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the command would run for minutes")
    out = tmp_path / "gpu_check.json"
    assert gc.main(["--out", str(out)]) == 2
    rec = _strict_json(out)
    assert rec["mode"] == "cuda" and rec["steps"] == {} and "no CUDA device" in rec["error"]
    assert "--cpu-stub" in capsys.readouterr().err
