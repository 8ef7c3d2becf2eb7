"""The shape of the code a reader meets: function lengths, parameters, cyclomatic complexity, and how
often a ``slabopt compress`` run enters each module of ``llm/``.

    .venv/bin/python -m benchmarks.code_shape            # static counts (needs radon for complexity)
    .venv/bin/python -m benchmarks.code_shape --trace    # plus module entries of a tiny compress run
"""

from __future__ import annotations

import argparse
import ast
import collections
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("slabopt", "llm")


def functions() -> list[tuple[int, int, str]]:
    """(lines, parameters without self/cls, "file:name") of every function in the packages."""
    rows = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
                    params = len([n for n in names if n not in ("self", "cls")])
                    rows.append((node.end_lineno - node.lineno + 1, params,
                                 f"{path.relative_to(REPO)}:{node.name}"))
    return rows


def complexity(limit: int = 15) -> list[tuple[int, str]]:
    """(radon cyclomatic complexity, "file:name") of the functions above ``limit``."""
    from radon.complexity import cc_visit

    out = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for block in cc_visit(path.read_text(encoding="utf-8")):
                if block.complexity > limit:
                    out.append((block.complexity, f"{path.relative_to(REPO)}:{block.name}"))
    return sorted(out, reverse=True)


def module_entries() -> collections.Counter:
    """Calls entering each ``llm/`` module during ``slabopt compress`` of a tiny checkpoint."""
    sys.path.insert(0, str(REPO))
    from slabopt.llm import cli

    from tests._llm import save_checkpoint

    counts: collections.Counter = collections.Counter()
    llm_dir = str(REPO / "llm")

    def profile(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename.startswith(llm_dir):
            counts[Path(frame.f_code.co_filename).stem] += 1

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "ckpt")
        sys.setprofile(profile)
        try:
            cli.main(["compress", "--model", str(ckpt), "--calib-tokens", "32", "--seqlen", "16",
                      "--rank", "1", "--out", str(Path(tmp) / "out"), "-q"])
        finally:
            sys.setprofile(None)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    rows = functions()
    print("longest functions:", ", ".join(f"{r[2]} {r[0]}" for r in sorted(rows, reverse=True)[:8]))
    print(f"functions over 60 lines: {sum(r[0] > 60 for r in rows)}; over 6 parameters: "
          f"{sum(r[1] > 6 for r in rows)} of {len(rows)}")
    print("most parameters:", ", ".join(f"{r[2]} {r[1]}" for r in sorted(rows, key=lambda r: -r[1])[:8]))
    try:
        cc = complexity()
        print(f"complexity over 15: {len(cc)}:", ", ".join(f"{n} {c}" for c, n in cc))
    except ImportError:
        print("complexity: pip install radon")
    if args.trace:
        counts = module_entries()
        print("module entries in one tiny compress:", ", ".join(f"{m} {c}" for m, c in counts.most_common()))


if __name__ == "__main__":
    main()
