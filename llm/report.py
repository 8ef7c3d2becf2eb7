"""The results of ``slabopt compare``: a Markdown table and a plot of perplexity against ratio."""

from __future__ import annotations

import textwrap
from pathlib import Path


def _zero_shot_cell(r: dict, with_zero_shot: bool) -> str:
    if not with_zero_shot:
        return ""
    avg = r.get("zero_shot_average")
    return " - |" if avg is None else f" {avg:.4f} |"


def _dense_row(r: dict, zs: bool) -> str:
    return (f"| dense | - | 16 | 0 | {r.get('dense16_bytes', 0):,} (16-bit) | 0 | {r['perplexity']:.3f} "
            f"| 1.000 |{_zero_shot_cell(r, zs)} - |")


def _method_row(r: dict, dense: float | None, zs: bool) -> str:
    rel = f"{r['perplexity'] / dense:.3f}" if dense else "-"
    requested = (f"{r['bits']} bits" if r.get("bits") is not None else
                 r["ratio"] if r["ratio"] is not None else "- (fixed)")
    name = f"{r['method']} ({r['recipe']})" if r.get("recipe") else r["method"]
    return (f"| {name} | {requested} | {r['bits_per_weight']:.3f} | {r['budget_ratio']:.4f} | "
            f"{r['disk_bytes']:,} | {r['disk_ratio']:.4f} | {r['perplexity']:.3f} | {rel} |"
            f"{_zero_shot_cell(r, zs)} {r['seconds']:.1f} |")


COLUMNS = (
    "What the columns say: *requested* is the budget asked for (bits per weight on disk, or the ratio "
    "of 16-bit storage to remove); *bits per weight* is what the compressed linear layers take in "
    "their files, every code, mask, sign, scale and index counted (file headers included); *ratio "
    "(budget)* is 1 − (bits the solver counted)/(16-bit dense bits); *linear bytes on disk* and "
    "*ratio on disk* are the real files; *perplexity* is on the test windows named below (*× dense*: "
    "against the dense row of this table, measured on the same windows, so it differs from numbers "
    "measured on other windows); *compress time* is the whole compression, calibration included. "
    "*recipe (M)* is what `slabopt compress --bits B` runs without `--method`: method M with the "
    "settings the measured tables recommend at that size."
)


def caption(s: dict) -> str:
    """One paragraph naming the model, text, windows and solver settings of a table."""
    windows = s["calib_tokens"] // s["seqlen"] + (s["calib_tokens"] % s["seqlen"] > 0)
    max_iter = s["max_iter"] if s.get("max_iter") is not None else "each method's default"
    opts = "".join(f", {k}={v}" for k, v in (s.get("options") or {}).items())
    return (f"Model {s['model']}; text: {s['text']}; test: first {s['tokens'] // s['seqlen']} × "
            f"{s['seqlen']} tokens; calibration: {windows} windows × {s['seqlen']} tokens, seed "
            f"{s['seed']}; rank {s['rank']}, {s['value_bits']}-bit values, {s['index_bits']} index bits, "
            f"positions {s.get('positions', 'index')}, pattern {s['pattern']}; max_iter {max_iter}{opts}.")


def markdown_table(rows: list[dict], settings: dict) -> str:
    """Markdown table of the ``compare`` rows (dense first), with a caption of the settings."""
    zs = any("zero_shot_average" in r for r in rows)
    lines = [
        "| method | requested | bits per weight | ratio (budget) | linear bytes on disk | ratio on disk "
        f"| perplexity | × dense |{' zero-shot avg (acc) |' if zs else ''} compress time (s) |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if zs else "") + "---|",
    ]
    dense = next((r["perplexity"] for r in rows if r["method"] == "dense"), None)
    lines += [_dense_row(r, zs) if r["method"] == "dense" else _method_row(r, dense, zs) for r in rows]
    tasks = settings.get("tasks") or []
    note = (f" Zero-shot: lm-eval on the shipped validation splits of {', '.join(tasks)}, first "
            f"{settings.get('limit') or 'all'} documents each; the average is of acc." if zs else "")
    return "\n".join([*lines, "", caption(settings) + note, "", COLUMNS])


def _x(r: dict, by_bits: bool) -> float:
    if by_bits:
        return r["bits_per_weight"]
    return r["ratio"] if r["ratio"] is not None else r["budget_ratio"]


def _panel(ax, rows: list[dict], key: str, label: str, log: bool) -> None:
    dense = next((r.get(key) for r in rows if r["method"] == "dense"), None)
    by_bits = any(r.get("bits") is not None for r in rows)
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        pts = sorted((_x(r, by_bits), r[key]) for r in rows if r["method"] == m and r.get(key) is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    if dense is not None:
        ax.axhline(dense, color="k", ls="--", lw=1, label="dense")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("bits per weight on disk (every stored bit counted)" if by_bits else
                  "compression ratio (fraction of 16-bit storage removed)")
    ax.set_ylabel(label)
    ax.legend(fontsize=8)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """PNG of perplexity (log scale) against the ratio, one line per method, and next to it the
    zero-shot average when the rows have one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = any(r.get("zero_shot_average") is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if zs else 1, figsize=(11 if zs else 6, 4), squeeze=False)
    _panel(axes[0][0], rows, "perplexity", "test perplexity (log scale)", log=True)
    if zs:
        _panel(axes[0][1], rows, "zero_shot_average", "zero-shot average accuracy", log=False)
    fig.suptitle("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
