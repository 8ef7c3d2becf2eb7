"""Merge the zero-shot runs of docs/results.md into one table and plot.

Inputs: the ``results.json`` of a ``slabopt compare --tasks ...`` run and the ``slabopt eval
--tasks ... --json`` outputs of the rows compressed separately (one JSON file per row, named
``METHOD-rRATIO.json``). Output: ``benchmarks/results/zeroshot_compare.json`` (all rows), a
Markdown table on stdout, and ``docs/results_zeroshot.png`` (perplexity and zero-shot average
against the ratio, per method)::

    .venv/bin/python benchmarks/zeroshot_table.py runs/zs/results.json runs/zs_json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_JSON = REPO / "benchmarks" / "results" / "zeroshot_compare.json"
OUT_PNG = REPO / "docs" / "results_zeroshot.png"
TASKS = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "boolq")


def load_rows(compare_json: Path, eval_dir: Path) -> list[dict]:
    """Rows of the compare run, then those of the separate evals (method and ratio from the name)."""
    rows = [{k: r[k] for k in ("method", "ratio", "perplexity", "zero_shot")} | {"source": "compare"}
            for r in json.loads(compare_json.read_text())["rows"]]
    for f in sorted(eval_dir.glob("*-r*.json")):
        m = re.fullmatch(r"(.+)-r([0-9.]+)", f.stem)
        ev = json.loads(f.read_text())
        rows.append({"method": m.group(1), "ratio": float(m.group(2)), "perplexity": ev["perplexity"],
                     "zero_shot": ev["tasks"], "source": f"eval ({f.name})"})
    for r in rows:
        accs = [r["zero_shot"][t]["acc"] for t in TASKS]
        r["average"] = sum(accs) / len(accs)
        r["average_without_boolq"] = sum(accs[:-1]) / (len(accs) - 1)
    return sorted(rows, key=lambda r: (r["ratio"], r["method"]))


def table(rows: list[dict]) -> str:
    head = ("| method | ratio | perplexity | " + " | ".join(TASKS)
            + " | average (6) | average without boolq (5) |")
    lines = [head, "|" + "---|" * (len(TASKS) + 5)]
    for r in rows:
        accs = " | ".join(f"{r['zero_shot'][t]['acc']:.2f}" for t in TASKS)
        lines.append(f"| {r['method']} | {r['ratio']:g} | {r['perplexity']:.3f} | {accs} | "
                     f"{r['average']:.4f} | {r['average_without_boolq']:.4f} |")
    return "\n".join(lines)


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(r for r in rows if r["method"] == "dense")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (("perplexity", "perplexity (log)"),
              ("average_without_boolq", "zero-shot acc, 5 tasks (no BoolQ)"),
              ("average", "zero-shot acc, 6 tasks"))
    for ax, (field, label) in zip(axes, panels, strict=True):
        for method in sorted({r["method"] for r in rows} - {"dense"}):
            mine = [r for r in rows if r["method"] == method]
            ax.plot([r["ratio"] for r in mine], [r[field] for r in mine], "o-", label=method)
        ax.axhline(dense[field], color="k", ls=":", label="dense")
        ax.set_xlabel("ratio (fraction of 16-bit storage removed, budget)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M: perplexity and zero-shot accuracy (first 100 documents per task)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("compare_json", type=Path)
    ap.add_argument("eval_dir", type=Path)
    args = ap.parse_args()
    rows = load_rows(args.compare_json, args.eval_dir)
    OUT_JSON.write_text(json.dumps({"rows": rows}, indent=1))
    plot(rows, OUT_PNG)
    print(table(rows))
    print(f"\nplot: {OUT_PNG.relative_to(REPO)}; rows: {OUT_JSON.relative_to(REPO)}")


if __name__ == "__main__":
    main()
