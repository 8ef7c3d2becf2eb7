"""Plots for docs/benchmarks_solvers.md from the JSON results of the peer benchmarks.

Reads ``benchmarks/results/layers*.json`` (``bench_peers_layers``) and
``benchmarks/results/synthetic.json`` (``bench_peers_synthetic``) and writes

* ``docs/solvers_error_vs_ratio.png``: f and g relative to Wanda (geometric mean over all layers
  found) against the achieved compression ratio, one line per method;
* ``docs/solvers_objective_vs_iteration.png``: the recorded histories (one layer, ratio 0.5) of each
  results file: f per iteration of the iterative f-solvers, g per iteration of admm with its
  primal/dual residuals;
* ``docs/solvers_synthetic.png``: time against error after projection to the (r, k) budget.

It also prints the tables of the report (markdown) so that every number there can be regenerated.

    python -m benchmarks.plot_peers [--layers benchmarks/results/layers*.json] [--no-plots]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
# drawing order and styles; methods missing from the results are skipped
STYLE = {
    "magnitude": dict(color="0.6", ls=":", marker="v"),
    "wanda": dict(color="k", ls="--", marker="o"),
    "sparsegpt": dict(color="tab:brown", ls="--", marker="s"),
    "svd (weighted)": dict(color="0.4", ls=":", marker="^"),
    "rpca→budget r=16": dict(color="tab:pink", ls=":", marker="x"),
    "oats r=16": dict(color="tab:olive", ls="-.", marker="D"),
    "godec r=16": dict(color="tab:cyan", ls="-.", marker="d"),
    "alternating r=1": dict(color="tab:blue", ls="-", marker="o"),
    "two_level": dict(color="tab:orange", ls="-", marker="s"),
    "slab_offset r=1": dict(color="tab:green", ls="-", marker="^"),
    "slab_init r=1": dict(color="tab:purple", ls="-", marker="v"),
    "admm r=1": dict(color="tab:red", ls="-", marker="*"),
}


def gmean(xs):
    xs = list(xs)
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def load_layers(paths):
    """(rows with a requested ratio, 'rpca (reached)' rows, [(file, json)] in the given order)."""
    rows, reached, docs = [], [], []
    for p in paths:
        d = json.loads(Path(p).read_text())
        docs.append((Path(p), d))
        for r in d["rows"]:
            (rows if "requested" in r else reached).append(r)
    return rows, reached, docs


def summary(rows):
    """{method: {ratio: dict(f, g, time, achieved, n)}}: geometric means of f/g relative to Wanda,
    total time over the layers, smallest achieved ratio."""
    by = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by[r["method"]][r["requested"]].append(r)
    out = {}
    for m, per in by.items():
        out[m] = {q: dict(f=gmean(x["f_rel_wanda"] for x in rs), g=gmean(x["g_rel_wanda"] for x in rs),
                          time=sum(x["time"] for x in rs), achieved=min(x["ratio"] for x in rs),
                          n=len(rs))
                  for q, rs in sorted(per.items())}
    return out


def methods_in(summ):
    return [m for m in STYLE if m in summ] + sorted(m for m in summ if m not in STYLE)


def print_tables(rows, reached, syn):
    summ = summary(rows)
    ratios = sorted({r["requested"] for r in rows})
    layers = sorted({r["layer"] for r in rows})
    print(f"## real layers: {len(layers)} layers\n")
    for key, title in (("f", "f / f_Wanda"), ("g", "g / g_Wanda")):
        print(f"| method | {' | '.join(f'{q}' for q in ratios)} |  ({title}, geometric mean)")
        print("|---" * (len(ratios) + 1) + "|")
        for m in methods_in(summ):
            best = [min(summ[x][q][key] for x in summ if q in summ[x]) for q in ratios]
            cells = []
            for q, b in zip(ratios, best, strict=True):
                v = summ[m].get(q, {}).get(key)
                cells.append("—" if v is None else (f"**{v:.3f}**" if v == b else f"{v:.3f}"))
            print(f"| {m} | {' | '.join(cells)} |")
        print()
    print("| method | " + " | ".join(f"time {q} (s)" for q in ratios) + " |  (sum over layers)")
    print("|---" * (len(ratios) + 1) + "|")
    for m in methods_in(summ):
        print(f"| {m} | " + " | ".join(f"{summ[m][q]['time']:.1f}" if q in summ[m] else "—"
                                       for q in ratios) + " |")
    q_t = 0.5 if 0.5 in ratios else ratios[0]
    types = sorted({r["layer"].split(".", 3)[3] for r in rows})
    for block in sorted({int(r["layer"].split(".")[2]) for r in rows}):
        print(f"\n### time per layer (s), block {block}, ratio {q_t}\n")
        print("| method | " + " | ".join(t.split(".")[-1] for t in types) + " |")
        print("|---" * (len(types) + 1) + "|")
        idx_t = {(r["layer"], r["method"]): r for r in rows if r["requested"] == q_t}
        for m in methods_in(summ):
            cells = [idx_t.get((f"model.layers.{block}.{t}", m)) for t in types]
            print(f"| {m} | " + " | ".join("—" if c is None else f"{c['time']:.2f}" for c in cells)
                  + " |")
    print("\n## per layer: admm vs alternating vs sparsegpt (g / g_Wanda, f / f_Wanda)\n")
    idx = {(r["layer"], r["requested"], r["method"]): r for r in rows}
    print("| layer | shape | ratio | g alt | g admm | g sparsegpt | f alt | f admm |")
    print("|---|---|---|---|---|---|---|---|")
    for layer in layers:
        for q in ratios:
            a, b, s = (idx.get((layer, q, m)) for m in ("alternating r=1", "admm r=1", "sparsegpt"))
            if a and b and s:
                short = layer.replace("model.layers.", "").replace("self_attn.", "").replace("mlp.", "")
                print(f"| {short} | {a['shape'][0]}×{a['shape'][1]} | {q} | {a['g_rel_wanda']:.3f} "
                      f"| {b['g_rel_wanda']:.3f} | {s['g_rel_wanda']:.3f} | {a['f_rel_wanda']:.3f} "
                      f"| {b['f_rel_wanda']:.3f} |")
    print("\n## rpca (no budget): what it reached\n")
    print("| layer | rank | nnz | ratio | iterations | time (s) |")
    print("|---|---|---|---|---|---|")
    for r in reached:
        print(f"| {r['layer']} | {r['rank']} | {r['nnz']} | {r['ratio']:.3f} | {r['n_iter']} "
              f"| {r['time']:.1f} |")
    if syn:
        print("\n## synthetic\n")
        print("| n | method | time median (s) | err L | err S | err fit | err at budget | rank | nnz |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in sorted(syn["rows"], key=lambda r: (r["n"], r["err_budget"])):
            print(f"| {r['n']} | {r['method']} | {r['time_median']:.2f} | {r['err_L']:.4f} "
                  f"| {r['err_S']:.4f} | {r['err_fit']:.2e} | {r['err_budget']:.5f} "
                  f"| {r['rank'] if r['rank'] is not None else '—'} | {r['nnz']} |")


def plot_error(rows, out):
    import matplotlib.pyplot as plt

    summ = summary(rows)
    n_layers = len({r["layer"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.8), sharex=True)
    for ax, key, title in ((axes[0], "f", "diagonal objective f"), (axes[1], "g", "full objective g")):
        for m in methods_in(summ):
            qs = sorted(summ[m])
            ax.plot([summ[m][q]["achieved"] for q in qs], [summ[m][q][key] for q in qs],
                    label=m, lw=1.6, ms=6, **STYLE.get(m, {}))
        ax.set_yscale("log")
        ax.axhline(1, color="k", lw=0.6)
        ax.set_xlabel("compression ratio (fraction of dense 16-bit storage removed)")
        ax.set_ylabel(f"{key} / {key}_Wanda  (geometric mean over {n_layers} layers)")
        ax.set_title(f"{title}, relative to Wanda (lower is better)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=9)
    fig.suptitle("SmolLM2-135M layers with real calibration inputs, one thread")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_histories(docs, out):
    import matplotlib.pyplot as plt

    docs = [(p, d) for p, d in docs if d.get("histories")]
    fig, axes = plt.subplots(len(docs), 3, figsize=(15, 4.2 * len(docs)), squeeze=False)
    for row, (_, d) in zip(axes, docs, strict=True):
        h, layer, q = d["histories"], d["history_layer"], d["history_ratio"]
        short = layer.replace("model.layers.", "block ")
        ref = h["wanda"][0]
        rows = {r["method"]: r for r in d["rows"]
                if r.get("layer") == layer and r.get("requested") == q}
        ax = row[0]
        for m in ("oats r=16", "godec r=16", "alternating r=1", "two_level", "slab_offset r=1",
                  "slab_init r=1"):
            if m in h:
                st = dict(STYLE[m], marker=None)
                ax.plot(range(1, len(h[m]) + 1), [v / ref for v in h[m]], label=m, lw=1.6, **st)
        ax.axhline(1, color="k", lw=0.8, ls="--", label="wanda")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("f / f_Wanda")
        ax.set_title(f"f per iteration ({short}, ratio {q})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax = row[1]
        gref = rows["wanda"]["g"]
        ax.plot(range(len(h["admm r=1"])), [v / gref for v in h["admm r=1"]], label="admm r=1 (g)",
                **dict(STYLE["admm r=1"], marker="."))
        for m, c, ls in (("alternating r=1", "tab:blue", ":"), ("sparsegpt", "tab:brown", "--")):
            ax.axhline(rows[m]["g"] / gref, color=c, ls=ls, lw=2, label=f"{m} (final g)")
        ax.axhline(1, color="k", lw=0.8, ls="--", label="wanda")
        ax.set_yscale("log")
        ax.set_xlabel("admm iteration (0 = alternating start)")
        ax.set_ylabel("g / g_Wanda")
        ax.set_title("admm: g of each feasible iterate", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax = row[2]
        ax.semilogy(range(1, len(h["admm primal"]) + 1), h["admm primal"], label="primal ‖Z̃ − P‖")
        ax.semilogy(range(1, len(h["admm dual"]) + 1), h["admm dual"], label="dual ρ‖P − P_prev‖")
        ax.set_xlabel("admm iteration")
        ax.set_title("admm residuals (scaled coordinates)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_synthetic(syn, out):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    sizes = sorted({r["n"] for r in syn["rows"]})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(13, 2.6 + 0.55 * len(syn["rows"])),
                             squeeze=False, gridspec_kw=dict(width_ratios=(1, 1.6)))
    for (ax_t, ax_e), n in zip(axes, sizes, strict=True):
        rs = sorted((r for r in syn["rows"] if r["n"] == n), key=lambda r: -r["err_budget"])
        y = list(range(len(rs)))
        ax_t.barh(y, [r["time_median"] for r in rs], color="tab:gray")
        for i, r in enumerate(rs):
            ax_t.annotate(f"{r['time_median']:.1f} s", (r["time_median"], i), fontsize=8,
                          xytext=(3, -3), textcoords="offset points")
        ax_t.set_yticks(y, [r["method"] for r in rs], fontsize=9)
        ax_t.set_xscale("log")
        ax_t.set_xlim(0.3, max(r["time_median"] for r in syn["rows"]) * 8)
        ax_t.set_xlabel("wall time, one thread (s, median)")
        ax_t.set_title(f"{n}×{n}: time", fontsize=10)
        h = 0.27
        for j, (key, lab, c) in enumerate((("err_L", "‖L − L₀‖/‖L₀‖", "tab:blue"),
                                           ("err_S", "‖S − S₀‖/‖S₀‖", "tab:orange"),
                                           ("err_budget", "‖M − P_r(L) − P_k(S)‖/‖M‖", "tab:green"))):
            ax_e.barh([i + (j - 1) * h for i in y], [r[key] for r in rs], height=h, color=c, label=lab)
        ax_e.set_yticks(y, [""] * len(rs))
        ax_e.set_xscale("log")
        ax_e.set_xlim(1e-3, 5e-2)
        ax_e.xaxis.set_minor_formatter(NullFormatter())
        ax_e.set_xlabel("relative error (log)")
        ax_e.set_title(f"{n}×{n}: rank 32 + 5% outliers in [−5, 5] + noise 0.01 (r = 32, k = nnz(S₀))",
                       fontsize=10)
        ax_e.grid(True, axis="x", which="both", alpha=0.3)
    handles, labels = axes[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=Path, nargs="*",
                    default=sorted(RESULTS.glob("layers*.json"), reverse=True))
    ap.add_argument("--synthetic", type=Path, default=RESULTS / "synthetic.json")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    rows, reached, docs = load_layers(args.layers)
    syn = json.loads(args.synthetic.read_text()) if args.synthetic.exists() else None
    print_tables(rows, reached, syn)
    if args.no_plots:
        return
    import matplotlib

    matplotlib.use("Agg")
    DOCS.mkdir(exist_ok=True)
    plot_error(rows, DOCS / "solvers_error_vs_ratio.png")
    plot_histories(docs, DOCS / "solvers_objective_vs_iteration.png")
    if syn:
        plot_synthetic(syn, DOCS / "solvers_synthetic.png")


if __name__ == "__main__":
    main()
