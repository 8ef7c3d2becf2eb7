"""``python -m proofs_checks``: run every check of docs/formulation.md §6 and print one row per statement.

Exits 1 if any check fails. ``--seed`` changes the random cases.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m proofs_checks", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from .checks import all_checks

    start = time.perf_counter()
    checks = all_checks(args.seed)
    width = max(len(c.statement) for c in checks)
    print(f"{'statement':<{width}}  {'cases':>6}  {'largest violation':>17}  {'tolerance':>9}  result")
    for c in checks:
        result = ("PASS" if c.passed else "FAIL") + (f" ({c.note})" if c.note else "")
        print(f"{c.statement:<{width}}  {c.cases:>6}  {c.violation:>17.3e}  {c.tol:>9.0e}  {result}")
    failed = [c for c in checks if not c.passed]
    print(
        f"\n{len(checks) - len(failed)} passed, {len(failed)} failed in {time.perf_counter() - start:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
