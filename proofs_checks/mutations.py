"""``python -m proofs_checks.mutations``: show that the checks can fail.

Each mutation breaks, on purpose, one line of ``slabopt/`` that a statement of docs/formulation.md §6
guards (the sign rule, the sparse score, the weighting of the low-rank step, the quantiser's split criterion,
the budget's rounding, ...). For every mutation the repository's tracked files are copied to a
temporary folder, the one line is replaced there (the working tree is never touched), and both
``python -m proofs_checks`` and the theory-related tests are run on the copy. A mutation is
*detected* when at least one check or test fails. The unmutated copy runs first and must pass.

Prints a Markdown table (mutation, statement guarded, failing checks, failing tests) and exits 1
if the baseline fails or any mutation goes undetected. ``--out FILE`` also writes the table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_theory.py",
    "tests/test_core_steps.py",
    "tests/test_solvers_quantize.py",
    "tests/test_core_budget.py",
]


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once in ``path``) by ``new``."""

    name: str
    guards: str
    path: str
    old: str
    new: str


MUTATIONS = [
    Mutation("sign rule flipped: B = −sign(x)", "P2, descent, rank-1 fixed point",
             "slabopt/signs.py", "return x >= 0", "return x < 0"),
    Mutation("sign(0) = −1 instead of +1", "P2 (sign convention)",
             "slabopt/signs.py", "return x >= 0", "return x > 0"),
    Mutation("sparse score |E|·d → |E|·√d", "P4, descent",
             "slabopt/solvers/alternating.py", "scores *= problem.d", "scores *= problem.d ** 0.5"),
    Mutation("sparse score ignores d (Wanda's weighting dropped)", "P4, descent",
             "slabopt/solvers/alternating.py", "scores *= problem.d", "pass"),
    Mutation("low-rank step: SVD of R⊙B without D", "P3, descent",
             "slabopt/solvers/alternating.py", "if not weighted:", "if True:"),
    Mutation("low-rank step: D⁻¹ not applied to V", "P3, descent, rank-1 fixed point",
             "slabopt/solvers/alternating.py",
             "V = V * xp.reshape(problem.d_inv, (-1, 1))", "V = V"),
    Mutation("low-rank step: ε-regularised √(σ + 1e-6)", "P3, invariances (scale)",
             "slabopt/solvers/alternating.py", "root = xp.sqrt(s)", "root = xp.sqrt(s + 1e-6)"),
    Mutation("quantiser: split criterion without group sizes", "Lemma 1",
             "slabopt/level_quantizer.py", "lo_s * lo_s * total / safe", "lo_s * lo_s"),
    Mutation("quantiser: unweighted levels", "Lemma 1 (weighted form)",
             "slabopt/level_quantizer.py", "mu = xp.sum(os_ * ws, axis=1, keepdims=True) / total",
             "mu = xp.mean(ws, axis=1, keepdims=True)"),
    Mutation("budget: k rounded up (one value over budget)", "budget formula, invariances (exact budget)",
             "slabopt/budget.py", "k = min(math.floor(spare", "k = min(math.ceil(spare"),
]


def copy_tree(dest: Path) -> None:
    """Copy every tracked (and untracked, not ignored) file of the repository into ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
        capture_output=True, text=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def apply(tree: Path, mut: Mutation) -> None:
    """Replace the mutated line in the copy; refuse if the target text is not there exactly once."""
    path = tree / mut.path
    text = path.read_text()
    if text.count(mut.old) != 1:
        raise RuntimeError(f"mutation {mut.name!r}: {mut.old!r} occurs {text.count(mut.old)}× in {mut.path}")
    path.write_text(text.replace(mut.old, mut.new))


def run_on(tree: Path) -> tuple[list[str], list[str]]:
    """Failing proofs_checks rows and failing test ids on the copy ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import slabopt; print(slabopt.__file__)"],
                           cwd=tree, env=env, capture_output=True, text=True).stdout
    if not where.startswith(str(tree)):
        raise RuntimeError(f"the copy's slabopt was not imported (got {where!r})")
    checks = subprocess.run([sys.executable, "-m", "proofs_checks"], cwd=tree, env=env,
                            capture_output=True, text=True)
    failed_checks = [line.split("  ")[0].strip() for line in checks.stdout.splitlines()
                     if line.rstrip().endswith("FAIL") or " FAIL " in line]
    if checks.returncode != 0 and not failed_checks:
        failed_checks = ["crashed: " + (checks.stderr.strip().splitlines() or ["?"])[-1][:80]]
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
                            "--no-header", *TESTS], cwd=tree, env=env, capture_output=True, text=True)
    failing = re.finditer(r"^FAILED (\S+)", tests.stdout, re.M)
    failed_tests = sorted({m.group(1).split("[")[0] for m in failing})
    if tests.returncode not in (0, 1) and not failed_tests:
        failed_tests = [f"pytest exit {tests.returncode}"]
    return failed_checks, failed_tests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m proofs_checks.mutations",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    rows, ok = [], True
    for mut in [None, *MUTATIONS]:
        with tempfile.TemporaryDirectory(prefix="slabopt-mutant-") as tmp:
            tree = Path(tmp)
            copy_tree(tree)
            if mut is not None:
                apply(tree, mut)
            checks, tests = run_on(tree)
        name, guards = ("none (baseline)", "—") if mut is None else (mut.name, mut.guards)
        detected = bool(checks or tests)
        ok &= (not detected) if mut is None else detected
        verdict = ("clean" if not detected else "BASELINE FAILS") if mut is None else (
            "detected" if detected else "NOT DETECTED")
        rows.append(f"| {name} | {guards} | {'<br>'.join(checks) or '—'} | "
                    f"{'<br>'.join(t.replace('tests/', '') for t in tests) or '—'} | {verdict} |")
        print(rows[-1], flush=True)
    table = "\n".join([
        "| mutation | statement guarded | failing `proofs_checks` rows | failing tests | result |",
        "|---|---|---|---|---|",
        *rows,
    ])
    summary = f"\n{len(MUTATIONS)} mutations, {time.perf_counter() - start:.0f} s; " + (
        "every mutation detected, baseline clean" if ok else "SOME MUTATION UNDETECTED OR BASELINE FAILS")
    print("\n" + table + summary)
    if args.out:
        args.out.write_text(table + "\n" + summary.strip() + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
