"""The results of ``slabopt compare``: a Markdown table and a plot of perplexity against ratio."""

from __future__ import annotations

from pathlib import Path


def _dense_row(r: dict) -> str:
    return (f"| dense | 0 | 0 | {r.get('dense16_bytes', 0):,} (16-bit) | 0 | {r['perplexity']:.3f} "
            "| 1.000 | - |")


def _method_row(r: dict, dense: float | None) -> str:
    rel = f"{r['perplexity'] / dense:.3f}" if dense else "-"
    requested = r["ratio"] if r["ratio"] is not None else "- (N:M)"
    return (f"| {r['method']} | {requested} | {r['budget_ratio']:.4f} | {r['disk_bytes']:,} "
            f"| {r['disk_ratio']:.4f} | {r['perplexity']:.3f} | {rel} | {r['seconds']:.1f} |")


def caption(s: dict) -> str:
    """One paragraph naming the model, text, windows and solver settings of a table."""
    windows = s["calib_tokens"] // s["seqlen"] + (s["calib_tokens"] % s["seqlen"] > 0)
    max_iter = s["max_iter"] if s.get("max_iter") is not None else "each method's default"
    opts = "".join(f", {k}={v}" for k, v in (s.get("options") or {}).items())
    return (f"Model {s['model']}; text: {s['text']}; test: first {s['tokens'] // s['seqlen']} × "
            f"{s['seqlen']} tokens; calibration: {windows} windows × {s['seqlen']} tokens, seed "
            f"{s['seed']}; rank {s['rank']}, {s['value_bits']}-bit values, {s['index_bits']} index bits, "
            f"pattern {s['pattern']}; max_iter {max_iter}{opts}.")


def markdown_table(rows: list[dict], settings: dict) -> str:
    """Markdown table of the ``compare`` rows (dense first), with a caption of the settings."""
    lines = [
        "| method | ratio (requested) | ratio (budget, achieved) | linear bytes on disk | ratio on disk "
        "| perplexity | × dense | compress time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dense = next((r["perplexity"] for r in rows if r["method"] == "dense"), None)
    lines += [_dense_row(r) if r["method"] == "dense" else _method_row(r, dense) for r in rows]
    return "\n".join([*lines, "", caption(settings)])


def plot(rows: list[dict], path: Path, title: str) -> None:
    """PNG of perplexity (log scale) against the requested ratio, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = next((r["perplexity"] for r in rows if r["method"] == "dense"), None)
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        pts = sorted((r["ratio"] if r["ratio"] is not None else r["budget_ratio"], r["perplexity"])
                     for r in rows if r["method"] == m)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    if dense:
        ax.axhline(dense, color="k", ls="--", lw=1, label="dense")
    ax.set_yscale("log")
    ax.set_xlabel("compression ratio (fraction of 16-bit storage removed)")
    ax.set_ylabel("test perplexity (log scale)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
