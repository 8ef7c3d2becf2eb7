"""Wall time of ``slabopt compress`` (shipped SmolLM2, slab) on 1 process × 1 thread against
``torchrun`` with 2 processes × 1 thread (Gloo), weight parallel and with ``--data-parallel``
(docs/distributed.md).

    .venv/bin/python benchmarks/distributed_speed.py --repeats 3

Each repeat runs the modes one after another (interleaved, so a change in the machine's load hits
every mode alike); the load average is recorded before and after each run, and the CPU time (user
+ system) of the run's processes: on a shared machine, wall time against CPU time shows how much
of a core each process got. The weight-parallel folder is checked to be byte-identical to the
single-process one (same SHA-256 for every file the manifest lists).
Results: ``benchmarks/results/distributed_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "distributed_speed.json"
CHILD = "benchmarks.distributed_speed"  # runs the CLI like ``-m slabopt.llm`` and records its CPU time
MODES = {
    "single": [],
    "torchrun2": ["torchrun"],
    "torchrun2_data_parallel": ["torchrun", "--data-parallel"],
}


def command(mode: str, out: Path, calib_tokens: int, seqlen: int, entry: str = "slabopt.llm") -> list[str]:
    """The command line of one run (``torchrun`` as ``python -m torch.distributed.run``)."""
    flags = MODES[mode]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] \
        if "torchrun" in flags else [sys.executable]
    sub = ["child", "compress"] if entry == CHILD else ["compress"]
    return [*launch, "-m", entry, *sub, "--threads", "1", "--calib-tokens", str(calib_tokens),
            "--seqlen", str(seqlen), "--out", str(out), *[f for f in flags if f != "torchrun"]]


def child(argv: list[str]) -> int:
    """``slabopt`` (``cli.main``) in this process; then its CPU seconds go to $SLABOPT_CPU_DIR."""
    from slabopt.llm import cli

    code = cli.main(argv)
    t = os.times()
    rank = os.environ.get("RANK", "0")
    Path(os.environ["SLABOPT_CPU_DIR"], f"rank{rank}.json").write_text(
        json.dumps({"rank": int(rank), "cpu_seconds": t.user + t.system}))
    return code


def run_once(mode: str, out: Path, calib_tokens: int, seqlen: int) -> dict:
    """Run one compression; its wall time, the load before it and the manifest's compression time."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = command(mode, out, calib_tokens, seqlen, entry=CHILD)
    cpu_dir = out.with_name(out.name + "_cpu")
    shutil.rmtree(cpu_dir, ignore_errors=True)
    cpu_dir.mkdir(parents=True)
    load = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1", SLABOPT_CPU_DIR=str(cpu_dir)))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    man = json.loads((out / "manifest.json").read_text())
    return {"mode": mode, "wall_seconds": wall, "compress_seconds": man["compress_seconds"],
            "solve_seconds_sum": sum(e["seconds"] for e in man["layers"]), "load_before": list(load),
            "load_after": list(os.getloadavg()),
            "cpu_seconds": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
            "cpu_seconds_per_rank": [json.loads(p.read_text())["cpu_seconds"]
                                     for p in sorted(cpu_dir.glob("rank*.json"))],
            "files": man["files"]}


def summary(runs: list[dict]) -> dict:
    """min / median wall time per mode and the speed-ups against the single process."""
    by = {m: [r["wall_seconds"] for r in runs if r["mode"] == m] for m in MODES}
    out = {m: {"min": min(v), "median": statistics.median(v), "runs": len(v)} for m, v in by.items() if v}
    base = out.get("single")
    for m, s in out.items():
        if base and m != "single":
            s["speedup_min"] = base["min"] / s["min"]
            s["speedup_median"] = base["median"] / s["median"]
    cpu = {m: statistics.median(max(r["cpu_seconds_per_rank"]) for r in runs if r["mode"] == m)
           for m in out if all(r.get("cpu_seconds_per_rank") for r in runs if r["mode"] == m)}
    for m, c in cpu.items():  # an estimate, not a measurement: ignores waiting and the launcher
        out[m]["busiest_rank_cpu_seconds_median"] = c
        if "single" in cpu and m != "single":
            out[m]["cpu_bound_speedup_estimate"] = cpu["single"] / c
    return out


def main() -> None:
    if sys.argv[1:2] == ["child"]:
        sys.exit(child(sys.argv[2:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calib-tokens", type=int, default=4096)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--work", default="/tmp/slabopt_distributed_speed")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--keep-previous", action="store_true",
                    help="keep the sessions already in the results file (under previous_sessions)")
    args = ap.parse_args()
    previous = []
    if args.keep_previous and RESULT.exists():
        old = json.loads(RESULT.read_text())
        previous = [*old.pop("previous_sessions", []), old]
    work = Path(args.work)
    runs = []
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "settings": {"model": "shipped SmolLM2-135M", "method": "slab", "ratio": 0.5, "rank": 1,
                           "max_iter": 20, "calib_tokens": args.calib_tokens, "seqlen": args.seqlen,
                           "threads_per_process": 1},
              "commands": {m: " ".join(command(m, work / m, args.calib_tokens, args.seqlen)[1:])
                           for m in args.modes}}
    for rep in range(args.repeats):
        for mode in args.modes:
            r = run_once(mode, work / mode, args.calib_tokens, args.seqlen)
            r["repeat"] = rep
            runs.append(r)
            print(f"repeat {rep} {mode:26s} wall {r['wall_seconds']:7.1f}s  compress "
                  f"{r['compress_seconds']:7.1f}s  cpu {r['cpu_seconds']:7.1f}s  load before "
                  f"{r['load_before'][0]:.2f} after {r['load_after'][0]:.2f}", flush=True)
            if mode == "torchrun2" and "single" in args.modes:
                single = next(x for x in runs if x["mode"] == "single")
                r["byte_identical_to_single"] = r["files"] == single["files"]
            result.update(previous_sessions=previous,
                          runs=[{k: v for k, v in x.items() if k != "files"} for x in runs],
                          summary=summary(runs), load_after=list(os.getloadavg()))
            RESULT.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
