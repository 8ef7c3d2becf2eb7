"""``slabopt compare``: the dense model and every method at several ratios, as a table and a plot.

Each (method, ratio) gets its own output folder under the work folder. A folder made earlier with the
same settings is reused (or resumed); one made with other settings is kept and skipped unless
``overwrite``. The result files (``results.md``, ``results.json``, the plot) are only ever
overwritten when an earlier compare wrote them (``results.json`` lists them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slabopt.registry import get_method

from . import console
from .arch import block_linears, block_prefix, decoder_layers
from .data import DEFAULT_MODEL_NAME, TEST_TEXT, load_model
from .errors import UserError
from .evaluate import evaluate_model, load_target
from .pipeline import CompressConfig, ResumeMismatch, compress_checkpoint, resolve_device
from .recipe import COMPARE_PRESETS, METHOD, compare_plan, is_quantiser, recommend
from .recipe import RECIPE_METHOD as RECIPE

FORMAT = "slabopt-compare/1"
FULL = COMPARE_PRESETS["full"]


@dataclass(frozen=True)
class CompareSettings:
    """One compare run: the methods and ratios, the shared solver settings and the text sizes.

    ``asked`` holds the CompressConfig settings given for every run (``None``: not given), from
    which :func:`.recipe.recommend` makes each run's (``baseline=True``); ``base`` is them for
    slab, as the table describes them."""

    methods: tuple[str, ...]
    ratios: tuple[float | None, ...]
    base: CompressConfig
    work_dir: Path
    plot: Path | None = None
    model: str | None = None
    calib_tokens: int = FULL["calib_tokens"]
    seqlen: int = FULL["seqlen"]
    tokens: int = FULL["tokens"]
    dtype: str = "float32"
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = True
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    batch_size: int = 16
    method_options: dict = field(default_factory=dict)
    bits: tuple[float, ...] = ()  # budgets in bits per weight on disk, instead of ``ratios``
    asked: Mapping[str, Any] = field(default_factory=dict)

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


def plan_compare(asked: dict, quick: bool, given: Mapping[str, Any],
                 run: Mapping[str, Any]) -> CompareSettings:
    """The CompareSettings of a compare: ``asked`` (CompressConfig settings, ``None``: not given),
    ``given`` (methods, ratios, bits, text sizes, work folder; ``None``: the preset's,
    :func:`.recipe.compare_plan`) and ``run`` (the other CompareSettings fields). Every method's
    settings are checked before any work."""
    plan = compare_plan(quick, given, asked["pattern"])
    methods = tuple(plan["methods"])
    shared = {key: value for key, value in asked.items() if key != "options"}
    for method in methods:
        if method != RECIPE:
            recommend(baseline=True, **shared, method=method)
    base = replace(recommend(baseline=True, **shared, method=METHOD).config, options=asked["options"])
    return CompareSettings(methods=methods, ratios=tuple(plan["ratios"] or ()),
                           bits=tuple(plan["bits"] or ()), base=base, asked=shared,
                           work_dir=Path(plan["work_dir"]), calib_tokens=plan["calib_tokens"],
                           seqlen=plan["seqlen"], tokens=plan["tokens"],
                           method_options=split_options(methods, asked["options"]),
                           **{**run, "plot": Path(run["plot"]) if run.get("plot") else None})


def split_options(methods: tuple[str, ...], options: dict) -> dict[str, dict]:
    """Per method, the solver options its solver accepts (compare runs several solvers at once)."""
    accepted = {m: set() if m == RECIPE else set(get_method(m).option_names()) for m in methods}
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


def _run_config(cs: CompareSettings, method: str, ratio: float | None, bits: float | None) -> CompressConfig:
    """The settings of one run (:func:`.recipe.recommend`, the baseline): ``method`` at ``ratio`` or
    ``bits``; the recommended recipe at ``bits`` for method "recipe"."""
    return recommend(baseline=True, **cs.asked, method=None if method == RECIPE else method, ratio=ratio,
                     bits=bits, options=cs.method_options.get(method, {})).config


def _folder(cs: CompareSettings, method: str, cfg: CompressConfig, ratio: float | None,
            bits: float | None) -> Path:
    """The run's folder, named by method, budget (ratio, bits, a quantiser's options or the N:M
    pattern), rank and codes of S."""
    if bits is not None:
        budget = f"b{bits}"
    elif ratio is not None:
        budget = f"r{ratio}"
    elif is_quantiser(method):
        budget = "q" + "".join(f"-{k}{v}" for k, v in sorted(cfg.options.items()))
    else:
        budget = cs.base.pattern.replace(":", "of")
    coded = "" if cfg.sparse_bits is None else f"-q{cfg.sparse_bits}"
    return cs.work_dir / f"{method}-{budget}-rank{cs.base.rank}{coded}"


def _compress(cs: CompareSettings, method: str, ratio: float | None,
              bits: float | None) -> tuple[CompressConfig, Path, dict] | None:
    """(settings, folder, manifest) of one run compressed or reused; ``None`` when skipped, saying why."""
    asked = f"ratio {ratio}" if bits is None else f"{bits} bits"
    console.notice(f"[compare] {method} {asked}: compressing")
    try:
        cfg = _run_config(cs, method, ratio, bits)
        out = _folder(cs, method, cfg, ratio, bits)
        exists = out.exists() and any(out.iterdir())
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
    return cfg, out, man


def _one(cs: CompareSettings, method: str, ratio: float | None, tok, path,
         bits: float | None = None) -> dict | None:
    """Compress (or reuse) one folder and evaluate what is on disk; ``None`` when skipped."""
    done = _compress(cs, method, ratio, bits)
    if done is None:
        return None
    cfg, out, man = done
    cmodel, _, _, _ = load_target(str(out), None, cs.dtype, resolve_device(cs.device))
    ev = _scores(cs, cmodel, tok, path)
    s = man["sizes"]
    asked = f"ratio {ratio}" if bits is None else f"{bits} bits"
    console.notice(f"[compare] {method} {asked}: perplexity {ev['perplexity']:.3f} "
                   f"({man['compress_seconds']:.1f}s)")
    return {"method": method, **({"recipe": cfg.method} if method == RECIPE else {}), "ratio": ratio,
            "bits": bits, "bits_per_weight": cfg.value_bits * (1 - s["linear_disk_ratio"]), **ev,
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
                                              get_method(method).option_names())
            if fixed and i > 0:
                continue  # its options (or its algorithm) fix the bits: one run
            row = _one(cs, method, None if is_quantiser(method) else ratio, tok, path, bits)
            if row is not None:
                rows.append(row)
                _write(rows, described, outputs, t_start)
    return _write(rows, described, outputs, t_start), outputs
