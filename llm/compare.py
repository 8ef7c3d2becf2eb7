"""``slabopt compare``: the dense model and every method at several ratios, as a table and a plot.

Each (method, ratio) gets its own output folder under the work folder. A folder made earlier with the
same settings is reused (or resumed); one made with other settings is kept and skipped unless
``overwrite``. The result files (``results.md``, ``results.json``, the plot) are only ever
overwritten when an earlier compare wrote them (``results.json`` lists them).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from slabopt.registry import get_method

from . import console
from .arch import block_linears, block_prefix, decoder_layers
from .data import DEFAULT_MODEL_NAME, TEST_TEXT, load_model
from .errors import UserError
from .evaluate import evaluate_model, load_target
from .pipeline import CompressConfig, ResumeMismatch, compress_checkpoint, resolve_device, solver_name

FORMAT = "slabopt-compare/1"


@dataclass(frozen=True)
class CompareSettings:
    """One compare run: the methods and ratios, the shared solver settings and the text sizes."""

    methods: tuple[str, ...]
    ratios: tuple[float | None, ...]
    base: CompressConfig
    work_dir: Path
    plot: Path | None = None
    model: str | None = None
    calib_tokens: int = 16384
    seqlen: int = 1024
    tokens: int = 8192
    dtype: str = "float32"
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = True
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    batch_size: int = 16
    method_options: dict = field(default_factory=dict)
    bits: tuple[float, ...] = ()  # budgets in bits per weight on disk, instead of ``ratios``

    def describe(self) -> dict:
        """The settings as they go under the table and into ``results.json``."""
        b = self.base
        return {"model": self.model or DEFAULT_MODEL_NAME, "text": TEST_TEXT, "tokens": self.tokens,
                "seqlen": self.seqlen, "calib_tokens": self.calib_tokens, "seed": b.seed, "rank": b.rank,
                "max_iter": b.max_iter, "ratios": list(self.ratios), "methods": list(self.methods),
                "options": dict(b.options), "value_bits": b.value_bits, "index_bits": b.index_bits,
                "positions": b.positions, "sparse_bits": b.sparse_bits,
                "pattern": b.pattern, "dtype": self.dtype, "device": str(self.device),
                "tasks": list(self.tasks), "limit": self.limit, "bits": list(self.bits)}


RECIPE = "recipe"  # at each --bits, the method and settings slabopt.recipes recommends


def is_quantiser(method: str) -> bool:
    """A method whose options (bits, group size) fix its bits, so it runs once, at no ratio."""
    from slabopt.registry import get_method

    return method != RECIPE and get_method(solver_name(method)).quant_layout is not None


def _recipe_at(bits: float, value_bits: int) -> tuple[str, dict, dict]:
    """(method, config fields, options) of the recommended recipe at ``bits`` per weight on disk
    (:func:`slabopt.recipes.recipe_for_bits`): S + L ⊙ B's settings below the crossover, the
    quantiser's layout above it (with the ratio its cost is checked against)."""
    from slabopt.recipes import recipe_for_bits

    rec = recipe_for_bits(bits)
    settings = dict(rec.settings)
    if "bits" not in settings:
        settings["ratio"] = 1 - bits / value_bits
    return rec.method, {"ratio": None, **settings}, dict(rec.options)


def split_options(methods: tuple[str, ...], options: dict) -> dict[str, dict]:
    """Per method, the solver options its solver accepts (compare runs several solvers at once)."""
    from slabopt.registry import get_method

    accepted = {m: set() if m == RECIPE else set(get_method(solver_name(m)).option_names()) for m in methods}
    unused = [k for k in options if not any(k in a for a in accepted.values())]
    if unused:
        raise UserError(f"option(s) {', '.join(unused)} accepted by none of the methods "
                        f"{', '.join(methods)}")
    return {m: {k: v for k, v in options.items() if k in accepted[m]} for m in methods}


def result_files(work: Path, png: Path) -> dict[str, Path]:
    """The files compare writes; ``UserError`` when one exists that an earlier compare did not write."""
    outputs = {"md": work / "results.md", "json": work / "results.json", "png": png}
    written: list[str] = []
    if outputs["json"].is_file():
        try:
            old = json.loads(outputs["json"].read_text(encoding="utf-8"))
            if isinstance(old, dict) and old.get("format") == FORMAT:
                written = old.get("written", [])
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    for path in outputs.values():
        if (path.exists() or path.is_symlink()) and str(path.resolve()) not in written:
            raise UserError(f"{path} exists and was not written by `slabopt compare`; refusing to "
                            "overwrite it (choose another --work-dir or --plot)")
    return outputs


def _write(rows: list, described: dict, outputs: dict[str, Path], t_start: float) -> str:
    from .report import markdown_table, plot

    s = dict(described, total_seconds=time.perf_counter() - t_start)
    md = markdown_table(rows, s) + f"\nTotal wall time {s['total_seconds']:.0f}s.\n"
    outputs["md"].parent.mkdir(parents=True, exist_ok=True)
    outputs["md"].write_text(md)
    plot(rows, outputs["png"], f"{s['model'][:40]}: {s['tokens'] // s['seqlen']}×{s['seqlen']} test tokens, "
                               f"{s['calib_tokens']} calibration tokens, rank {s['rank']}")
    outputs["json"].write_text(json.dumps({"format": FORMAT, "settings": s, "rows": rows,
                                           "written": [str(p.resolve()) for p in outputs.values()]},
                                          indent=1))
    return md


def _at_bits(cs: CompareSettings, method: str, bits: float, options: dict) -> tuple[dict, dict]:
    """(config fields, options) of ``method`` at ``bits`` per weight on disk: a quantiser with
    options for code bits and group size gets the largest layout that fits
    (:func:`slabopt.recipes.quantiser_shape`); other methods the budget itself, with the positions
    of S counted as stored (Rice codes for the row pattern)."""
    from slabopt.recipes import quantiser_shape

    if is_quantiser(method):
        takes = "group_size" in get_method(solver_name(method)).option_names()
        if not takes:
            return {"ratio": None}, options  # its algorithm fixes its size
        b, g = quantiser_shape(bits)  # the ratio checks the layout's real cost on each layer
        return {"ratio": 1 - bits / cs.base.value_bits}, {**options, "bits": b, "group_size": g}
    positions = cs.base.positions
    if positions == "index":
        positions = "rice" if cs.base.pattern == "row" else "bitmask"
    return {"ratio": None, "bits": bits, "positions": positions}, options


def _one(cs: CompareSettings, method: str, ratio: float | None, tok, path,
         bits: float | None = None) -> dict | None:
    """Compress (or reuse) one folder and evaluate what is on disk; ``None`` when skipped."""
    from dataclasses import replace

    options = cs.method_options.get(method, {})
    fields, ran = {"ratio": ratio}, method
    if method == RECIPE:
        ran, fields, options = _recipe_at(bits, cs.base.value_bits)
        fields["method"] = ran
    elif bits is not None:
        fields, options = _at_bits(cs, method, bits, options)
    if bits is not None:
        budget = f"b{bits}"
    elif ratio is not None:
        budget = f"r{ratio}"
    elif is_quantiser(method):
        budget = "q" + "".join(f"-{k}{v}" for k, v in sorted(options.items()))
    else:
        budget = cs.base.pattern.replace(":", "of")
    cfg = replace(cs.base, **{"method": method, **fields}, options=options)
    asked = f"ratio {ratio}" if bits is None else f"{bits} bits"
    if "sparse" not in get_method(cfg.solver).components:
        cfg = replace(cfg, sparse_bits=None)  # --sparse-bits codes S; methods without one ignore it
    coded = "" if cfg.sparse_bits is None else f"-q{cfg.sparse_bits}"
    out = cs.work_dir / f"{method}-{budget}-rank{cs.base.rank}{coded}"
    console.notice(f"[compare] {method} {asked}: compressing")
    exists = out.exists() and any(out.iterdir())
    try:
        man = compress_checkpoint(cs.model, out, cfg, calib_tokens=cs.calib_tokens, seqlen=cs.seqlen,
                                  dtype=cs.dtype, device=cs.device, resume=exists and not cs.overwrite,
                                  overwrite=exists and cs.overwrite, progress=cs.progress)
    except ResumeMismatch as exc:
        console.notice(f"[compare] {method} {asked} skipped: {exc}; it is kept as it is (pass "
                       "--overwrite to recompute it)")
        return None
    except UserError as exc:
        console.notice(f"[compare] {method} {asked} skipped: {exc}")
        return None
    cmodel, _, _, _ = load_target(str(out), None, cs.dtype, resolve_device(cs.device))
    ev = _scores(cs, cmodel, tok, path)
    s = man["sizes"]
    console.notice(f"[compare] {method} {asked}: perplexity {ev['perplexity']:.3f} "
                   f"({man['compress_seconds']:.1f}s)")
    return {"method": method, **({"recipe": ran} if method == RECIPE else {}), "ratio": ratio, "bits": bits,
            "bits_per_weight": cfg.value_bits * (1 - s["linear_disk_ratio"]), **ev,
            "budget_ratio": s["linear_budget_ratio"],
            "disk_bytes": s["linear_bytes_on_disk"], "disk_ratio": s["linear_disk_ratio"],
            "seconds": man["compress_seconds"]}


def _scores(cs: CompareSettings, model, tok, path) -> dict:
    """Perplexity, and the zero-shot average and per-task results when tasks were asked for."""
    out = {"perplexity": evaluate_model(model, tok, path, cs.tokens, cs.seqlen)["perplexity"]}
    if cs.tasks:
        from .zeroshot import zero_shot

        zs = zero_shot(model, tok, cs.tasks, limit=cs.limit, batch_size=cs.batch_size, progress=cs.progress)
        out.update(zero_shot_average=zs["zero_shot_average"], zero_shot=zs["tasks"])
    return out


def run_compare(cs: CompareSettings) -> tuple[str, dict[str, Path]]:
    """Evaluate the dense model, then each (ratio, method); write the results; (table, files)."""
    outputs = result_files(cs.work_dir, cs.plot or cs.work_dir / "results.png")
    described = cs.describe()
    t_start = time.perf_counter()
    model, tok, path = load_model(cs.model, cs.dtype)
    console.notice(f"[compare] dense: evaluating {cs.tokens} tokens at seqlen {cs.seqlen}")
    dense = _scores(cs, model.to(resolve_device(cs.device)), tok, path)
    b = cs.base
    dense16 = sum(2 * m.weight.numel() for i, blk in enumerate(decoder_layers(model))
                  for m in block_linears(blk, block_prefix(model, i), b.targets, b.ignore).values())
    rows = [{"method": "dense", "ratio": 0.0, **dense, "dense16_bytes": dense16}]
    console.notice(f"[compare] dense perplexity {dense['perplexity']:.3f}")
    del model
    budgets = [(None, b) for b in cs.bits] or [(r, None) for r in cs.ratios]
    for i, (ratio, bits) in enumerate(budgets):
        for method in cs.methods:
            fixed = is_quantiser(method) and (bits is None or "group_size" not in
                                              get_method(solver_name(method)).option_names())
            if fixed and i > 0:
                continue  # its options (or its algorithm) fix the bits: one run
            row = _one(cs, method, None if is_quantiser(method) else ratio, tok, path, bits)
            if row is not None:
                rows.append(row)
                _write(rows, described, outputs, t_start)
    return _write(rows, described, outputs, t_start), outputs
