"""The settings of a compression: every default and every rule of the model pipeline, in one place.

``slabopt compress``, :class:`.pipeline.CompressConfig` (so ``compress_model`` and
``compress_checkpoint`` called from Python) and ``slabopt compare`` take their settings from
:func:`resolve`: what was given is kept, and each setting left out is chosen here.

* **Method.** A size in bits per weight on disk (``bits``) without a method takes the recommended
  recipe for that size (:func:`slabopt.recipes.recipe_for_bits`, from the measured tables); so does
  a ratio that leaves fewer than :data:`slabopt.recipes.SLAB_DEFAULT_FROM_BITS` bits per weight on
  disk. Otherwise :data:`METHOD`.
* **Budget.** Ratio :data:`RATIO`, unless the size is fixed by an N:M pattern or by a quantiser's
  options, or is given in bits. A quantiser with code-width and group options given a size in bits
  takes the largest layout that fits it (:func:`slabopt.recipes.quantiser_shape`).
* **Storage.** Rank :data:`RANK`; the positions of S counted as the folder stores them
  (:data:`POSITIONS`; with a size in bits, Rice codes for the row pattern); the kept values of S as
  codes of :data:`SPARSE_BITS` bits where the method stores a row or N:M sparse part.

``baseline=True`` is what ``slabopt compare`` runs every method at, so that methods compare on the
same footing: the papers' convention for a ratio (positions not counted, :data:`BASELINE_POSITIONS`;
values at full value bits), codes only for methods that store a sparse part, and a quantiser
whose options fix its size runs at that size. Its presets are :data:`COMPARE_PRESETS`.

:func:`check` holds the rules of the pipeline itself (a budget that is kept, value bits a folder can
store, the allocation); every rule on a layer's settings (method options, ratio or bits, rank,
pattern, positions, codes of S, groups of L) is the library's, :func:`slabopt.layer_budget`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING
from typing import Any, NamedTuple

from slabopt.budget import InfeasibleBudgetError
from slabopt.patterns import parse_pattern
from slabopt.recipes import (
    SLAB_DEFAULT_FROM_BITS,
    Recipe,
    default_recipe_for_ratio,
    quantiser_shape,
    recipe_for_bits,
)
from slabopt.registry import MethodInfo, get_method

from .errors import UserError


class _NotGiven:
    """The type of :data:`DEFAULT`."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _NotGiven()  # sparse_bits not given (None there means: values at value bits)

METHOD = "slab"  # without a method, from SLAB_DEFAULT_FROM_BITS bits per weight on disk up
RATIO = 0.5  # without a ratio, a size in bits, an N:M pattern or a quantiser's options
RANK = 1  # the rank of L the recipes were measured at
POSITIONS = "bitmask"  # the positions of S counted as stored: a ratio is the ratio on disk
BASELINE_POSITIONS = "index"  # compare: the papers' convention, positions not counted
SPARSE_BITS = "auto"  # codes of the kept values of S, q per layer from the bits left for them
STORE_BITS = (16, 32)  # value bits a saved folder stores (float16, float32)
ALLOCATIONS = ("uniform", "owl")
RECIPE_METHOD = "recipe"  # compare's name for "the recommended recipe at each size in bits"

# slabopt compare: what each run is, where not given (`make run` is the quick one)
COMPARE_PRESETS = {
    "full": dict(ratios=(0.5, 0.6, 0.7), bits=None,
                 methods=("magnitude", "wanda", "sparsegpt", "oats", METHOD), calib_tokens=16384,
                 seqlen=1024, tokens=8192, work_dir="runs/compare"),
    # 3.3 bits, not 3.25: GPTQ's int3 codes in groups of 128 take 3.28 bits on SmolLM2's 576-column layers
    "quick": dict(ratios=None, bits=(2.5, 3.3), methods=("rtn", "gptq", RECIPE_METHOD), calib_tokens=2048,
                  seqlen=256, tokens=2048, work_dir="runs/quick"),
}


class Choice(NamedTuple):
    """What :func:`recommend` returns."""

    config: Any  # the complete, checked CompressConfig
    why: str  # one line: what was chosen and why
    by_size: bool  # the method is the recipe chosen for the size, not given


# ------------------------------------------------------------------------------ questions
def method_info(method: object) -> MethodInfo | None:
    """The registered method (``slab`` included), or ``None`` for a name that is not one."""
    try:
        return get_method(method)  # type: ignore[arg-type]
    except ValueError:
        return None


def is_nm(pattern: object) -> bool:
    """Whether ``pattern`` is an N:M pattern (``False`` for one that does not parse)."""
    try:
        return parse_pattern(pattern).kind == "nm"  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False


def is_quantiser(method: object) -> bool:
    """Whether the method stores integer or binary codes whose layout its options fix."""
    info = method_info(method)
    return info is not None and info.quant_layout is not None


def fixed_size(method: object, pattern: object) -> bool:
    """Whether the method and pattern fix the size by themselves (N:M patterns, quantisers)."""
    return is_nm(pattern) or is_quantiser(method)


def stores_sparse(method: object) -> bool:
    """Whether the method stores a sparse part S (whose values can be stored as codes)."""
    info = method_info(method)
    return info is not None and "sparse" in info.components


def codes_apply(method: object, pattern: object) -> bool:
    """Whether codes of the values of S apply: a sparse part with an equal count per row."""
    try:
        return stores_sparse(method) and parse_pattern(pattern).kind != "global"  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False


def on_disk_bits(ratio: float, value_bits: int, positions: str) -> float:
    """Bits per weight on disk of a budget ratio: b·(1 − ratio), plus the 1-bit bitmask that
    ``positions="index"`` leaves out of the budget."""
    return value_bits * (1 - ratio) + (1 if positions == "index" else 0)


def counted_positions(pattern: str) -> str:
    """The positions of S counted as stored with a size in bits: Rice codes for the row pattern,
    else the bitmask or N:M codes (what ``positions="auto"`` means in the library)."""
    return "rice" if pattern == "row" else "bitmask"


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# -------------------------------------------------------------------------------- choosing
def resolve(asked: Mapping[str, Any], baseline: bool = False) -> tuple[dict, str, bool]:
    """(every field of a CompressConfig, why, by_size): ``asked`` with each setting not given
    (``None``; for ``sparse_bits`` :data:`DEFAULT`) chosen by the rules of the module docstring.
    A complete configuration comes back unchanged."""
    s = dict(asked, options=dict(asked["options"]))
    if _number(s["bits"]):
        s["bits"] = float(s["bits"])  # as the command line reads it, so the folders match
    rec, size, why = _size_recipe(s, baseline)
    if rec is not None:
        _take_recipe(s, rec, size)
    if s["method"] is None:
        s["method"] = METHOD
    _fill_budget(s, baseline)
    if s["rank"] is None:
        s["rank"] = RANK
    s["positions"] = _positions(s, baseline)
    s["sparse_bits"] = _sparse_bits(s, baseline)
    return s, why or _describe(s, baseline), rec is not None


def _size_recipe(s: dict, baseline: bool) -> tuple[Recipe | None, float, str]:
    """(recipe, size in bits per weight on disk, why) when the size chooses the method: bits
    without a method, or (not in the baseline) a ratio without a method that leaves fewer than
    SLAB_DEFAULT_FROM_BITS bits per weight on disk; else (None, 0, "")."""
    if s["method"] is not None or (s["bits"] is not None and s["ratio"] is not None):
        return None, 0.0, ""  # a budget given twice is for the check to refuse
    if s["bits"] is not None:
        size, asked = s["bits"], f"--bits {s['bits']}"
    elif not baseline and _number(s["ratio"]) and _number(s["value_bits"]) and 0 < s["ratio"] < 1:
        size = on_disk_bits(s["ratio"], s["value_bits"], s["positions"] or POSITIONS)
        asked = f"--ratio {s['ratio']} is {size:g} bits per weight on disk"
    else:
        return None, 0.0, ""
    try:
        rec = recipe_for_bits(size) if s["ratio"] is None else default_recipe_for_ratio(size)
    except ValueError as exc:
        raise UserError(f"{asked}: {exc}") from None
    if rec is None:
        return None, 0.0, ""
    if s["pattern"] != "row":
        raise UserError(f"--pattern {s['pattern']} with a size and no --method: the recommended recipes keep "
                        "S by rows; add --method (e.g. --method slab) to compress with the pattern")
    return rec, size, f"{asked}: using {rec.describe()}: {rec.reason}"


def _take_recipe(s: dict, rec: Recipe, size: float) -> None:
    """The recipe's method at ``size`` bits per weight; its options and settings where not given."""
    # a quantiser's layout at that size follows in _fill_budget
    s["method"], s["ratio"], s["bits"] = rec.method, None, rec.settings.get("bits", size)
    s["options"] = {**rec.options, **s["options"]}
    for key, value in rec.settings.items():
        if (key in ("rank", "positions") and s[key] is None) or (key == "sparse_bits" and s[key] is DEFAULT):
            s[key] = value


def _fill_budget(s: dict, baseline: bool) -> None:
    """The ratio where not given; a quantiser given a size in bits: the largest layout that fits it
    (then the ratio checks its cost), or, in the baseline, the size its own options fix."""
    if s["ratio"] is not None:
        return
    if s["bits"] is None:
        s["ratio"] = None if fixed_size(s["method"], s["pattern"]) else RATIO
        return
    info = method_info(s["method"])
    if info is None or info.quant_layout is None or not (_number(s["bits"]) and _number(s["value_bits"])):
        return
    if "group_size" in info.option_names():
        try:
            code_bits, group = quantiser_shape(s["bits"])
        except ValueError as exc:
            raise UserError(f"{s['method']} at {s['bits']} bits per weight: {exc}") from None
        s["options"] = {"bits": code_bits, "group_size": group, **s["options"]}
        s["ratio"], s["bits"] = 1 - s["bits"] / s["value_bits"], None
    elif baseline:
        s["bits"] = None  # its algorithm fixes its size


def _positions(s: dict, baseline: bool) -> str:
    if s["positions"] is not None:
        return s["positions"]
    if s["bits"] is not None:
        return counted_positions(s["pattern"])
    return BASELINE_POSITIONS if baseline else POSITIONS


def _sparse_bits(s: dict, baseline: bool) -> int | str | None:
    if s["sparse_bits"] is not DEFAULT:  # given; compare gives it only to methods with a sparse part
        return None if baseline and not stores_sparse(s["method"]) else s["sparse_bits"]
    return SPARSE_BITS if not baseline and codes_apply(s["method"], s["pattern"]) else None


def _describe(s: dict, baseline: bool) -> str:
    """One line for settings the size did not choose."""
    if s["bits"] is not None:
        budget = f"{s['bits']} bits per weight on disk"
    else:
        budget = "the size its pattern or options fix" if s["ratio"] is None else f"ratio {s['ratio']}"
    rule = ("compare's baseline: positions and values counted as the papers count them" if baseline else
            f"without a method {METHOD} from {SLAB_DEFAULT_FROM_BITS:g} bits per weight on disk up, and the "
            "storage slabopt compress recommends")
    codes = "none" if s["sparse_bits"] is None else s["sparse_bits"]
    return (f"{s['method']} at {budget} (rank {s['rank']}, positions {s['positions']}, sparse bits {codes}): "
            f"{rule}")


def recommend(*, baseline: bool = False, **asked: Any) -> Choice:
    """The complete, checked settings for what was asked (any CompressConfig field; left out or
    ``None``: not given) and one line saying what was chosen and why; ``UserError`` for settings
    that cannot be compressed. ``slabopt compress`` maps its command line onto this, ``compare``
    each of its runs (``baseline=True``)."""
    from .pipeline import CompressConfig

    fields = CompressConfig.__dataclass_fields__
    unknown = sorted(set(asked) - set(fields))
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}")
    start = {name: asked.get(name, _field_default(f)) for name, f in fields.items()}
    chosen, why, by_size = resolve(start, baseline)
    config = CompressConfig(**chosen)
    config.check()
    return Choice(config, why, by_size)


def _field_default(f: Any) -> Any:
    return f.default if f.default_factory is MISSING else f.default_factory()


# -------------------------------------------------------------------------------- checking
def check(cfg: Any) -> MethodInfo:
    """The registered method of a complete CompressConfig; ``UserError`` for settings that cannot be
    compressed: the pipeline's own rules, then the library's on a layer shape that takes every
    pattern (whether a shape meets the budget is checked per layer, ``check_layer_settings``)."""
    try:
        info = get_method(cfg.method)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _check_pipeline(cfg, info)
    _check_layer(cfg)
    return info


def _check_pipeline(cfg: Any, info: MethodInfo) -> None:
    """The rules of the pipeline itself: a budget that is kept, the allocation, refinement and the
    value bits a folder can store."""
    if not info.fixed_budget and not cfg.options.get("project", False):
        raise UserError(f"method {cfg.method!r} has no fixed budget (it keeps whatever rank and nonzeros it "
                        "reaches), so the saved model could be larger than the ratio says; add --option "
                        "project=true to project each layer to the budget")
    if cfg.allocation not in ALLOCATIONS:
        raise UserError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {cfg.allocation!r}")
    if cfg.allocation != "uniform" and (cfg.ratio is None or is_nm(cfg.pattern)):
        raise UserError("--allocation owl moves a ratio between blocks: give --ratio, and a row or global "
                        "pattern")
    if not isinstance(cfg.refine_steps, int) or cfg.refine_steps < 0:
        raise UserError(f"refine steps must be an integer >= 0, got {cfg.refine_steps!r}")
    if cfg.value_bits not in STORE_BITS:
        raise UserError(f"value bits must be 16 or 32 for a saved model, got {cfg.value_bits}")


def _check_layer(cfg: Any) -> None:
    """:func:`slabopt.layer_budget` on a square layer of 1024·M columns (M of an N:M pattern)."""
    import slabopt

    side = 1024 * (parse_pattern(cfg.pattern).m if is_nm(cfg.pattern) else 1)
    settings = cfg.solve_settings()
    if isinstance(settings["rank"], int) and settings["rank"] > side:
        settings["rank"] = side  # a rank that a layer's shape refuses is checked per layer
    try:
        slabopt.layer_budget((side, side), **settings)
    except InfeasibleBudgetError:
        pass  # whether a size can be met depends on the layer's shape
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None


# -------------------------------------------------------------------------------- compare
def compare_plan(quick: bool, given: Mapping[str, Any], pattern: str) -> dict:
    """What ``slabopt compare`` runs: ``given`` (methods, ratios, bits, text sizes, work folder;
    ``None``: not given) over the quick or full preset. An N:M pattern fixes the sparse part, so
    without ratios it runs once per method (or at each size in bits)."""
    if given.get("ratios") and given.get("bits"):
        raise UserError("give --ratios or --bits, not both")
    plan = {key: value if given.get(key) is None else given[key]
            for key, value in COMPARE_PRESETS["quick" if quick else "full"].items()}
    if given.get("ratios") is not None:
        plan["bits"] = None
    elif is_nm(pattern):
        plan["ratios"], plan["bits"] = (None,), given.get("bits")
    if RECIPE_METHOD in plan["methods"] and not plan["bits"]:
        raise UserError(f"method {RECIPE_METHOD!r} is the recommended recipe at each size in bits: give "
                        "--bits")
    return plan
