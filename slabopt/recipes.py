"""The recommended recipe for a size in bits per weight on disk: the one place that says which method
and settings ``slabopt compress --bits B`` (and :func:`recipe_for_bits`) use, from the measured
tables of docs/results.md ("Low-bit comparison").

Below ``CROSSOVER_BITS`` S + L ⊙ B with error feedback (``slab_obs``) gives the lower perplexity
(SmolLM2: 44 % lower than GPTQ int3 g128 at 3.25 bits, 20.0 at 4.01 bits against 21.2 for GPTQ int4
per channel at 4.05; below 4.04 bits GPTQ has no 4-bit layout at all); from there on the recipe is
GPTQ with the largest code width and group that fit (its held-out layer error is lower from 4 bits
on, on SmolLM2 and Gemma-3-270M).

How the model pipeline applies these (a size given as bits, or a ratio without a method) and its other
defaults are in ``slabopt.llm.recipe``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._validation import check_real

CROSSOVER_BITS = 4.1  # below: slab_obs; at and above: gptq, from its int4 per-channel layout on
# compress --ratio without --method keeps its default (slab) from here on; below, recipe_for_bits
# (slab within 1.1× of the best measured at 5–8 bits on disk, 4.4× GPTQ int4's perplexity at 4)
SLAB_DEFAULT_FROM_BITS = 5.0
GPTQ_SHAPES = ((8, None), (8, 128), (6, None), (6, 128), (5, None), (5, 128), (4, None), (4, 128),
               (4, 64), (3, None), (3, 128), (3, 64), (2, None), (2, 128), (2, 64))
PER_CHANNEL_MARGIN = 0.1  # bits per weight a per-channel scale and zero point may cost (n ≥ 320)


@dataclass(frozen=True)
class Recipe:
    """A method and its settings: ``solve`` keywords (``settings``) and method options."""

    method: str
    settings: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    reason: str = ""

    def describe(self) -> str:
        parts = [f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in {**self.settings, **self.options}.items()]
        return f"{self.method} ({', '.join(parts)})"


def _gptq_cost(bits: int, group: int | None) -> float:
    """Bits per weight of GPTQ codes with a 16-bit scale and zero point per group (per channel:
    at most ``PER_CHANNEL_MARGIN``)."""
    return bits + (PER_CHANNEL_MARGIN if group is None else 32 / group)


def quantiser_shape(bits: float) -> tuple[int, int | None]:
    """(code bits, group size) of the largest GPTQ/RTN layout of ``GPTQ_SHAPES`` costing at most
    ``bits`` per weight (16-bit scale and zero point per group)."""
    fits = [(b, g) for b, g in GPTQ_SHAPES if _gptq_cost(b, g) <= bits]
    if not fits:
        raise ValueError(f"no quantiser layout costs at most {bits} bits per weight (2-bit codes in groups "
                         "of 64 cost 2.5)")
    return max(fits, key=lambda s: _gptq_cost(*s))


def recipe_for_bits(bits: float) -> Recipe:
    """The recommended recipe at ``bits`` per weight on disk (module docstring)."""
    bits = check_real("bits", bits, 1.0, 16.0)
    if bits < CROSSOVER_BITS:
        q = 3 if bits < 2.75 else 4
        return Recipe("slab_obs", {"bits": bits, "rank": 1, "sparse_bits": q, "positions": "rice"},
                      {},
                      f"below {CROSSOVER_BITS} bits S + L⊙B with error feedback has the least layer error "
                      "and perplexity measured (docs/results.md)")
    b, g = quantiser_shape(bits)
    return Recipe("gptq", {"ratio": None}, {"bits": b, "group_size": g},
                  f"from {CROSSOVER_BITS} bits on GPTQ has the least layer error and perplexity measured "
                  "(docs/results.md)")


def default_recipe_for_ratio(on_disk_bits: float) -> Recipe | None:
    """What ``compress --ratio R`` without ``--method`` uses at ``on_disk_bits`` = the bits per
    weight R leaves on disk: ``None`` (the default slab recipe) from ``SLAB_DEFAULT_FROM_BITS`` on,
    else :func:`recipe_for_bits`."""
    return None if on_disk_bits >= SLAB_DEFAULT_FROM_BITS else recipe_for_bits(on_disk_bits)


# Recipes the measured tables mark as collapsing (perplexity ≥ 8× dense on SmolLM2, docs/results.md):
# (method, what collapses, the measurement)
COLLAPSING = (
    (("gptq", "rtn"), "with 2-bit codes", "GPTQ int2 g64 at 2.5 bits: perplexity 43,523 (3,742× dense)"),
    (("slab", "alternating", "admm", "wanda", "sparsegpt", "magnitude"), "at under 5 bits per weight",
     "slab at 4 bits on disk: 93.9 (8× dense), at 3.5 bits over 10⁷"),
)


def collapse_warning(method: str, bits: float | None, code_bits: int | None = None) -> str | None:
    """One line when ``method`` at ``bits`` per weight on disk (or with ``code_bits``-bit codes, for
    a quantiser) is a recipe the measured tables mark as collapsing, naming what to use instead."""
    for methods, what, measured in COLLAPSING:
        if method not in methods:
            continue
        quantiser = methods[0] == "gptq"
        if (quantiser and code_bits is not None and code_bits <= 2) or (
                not quantiser and bits is not None and bits < 5):
            better = recipe_for_bits(bits).describe() if bits is not None and bits >= 1 else "slab_obs"
            return (f"warning: {method} {what} collapses in the measured tables ({measured}); "
                    f"at this size use {better} (slabopt compress --bits B without --method)")
    return None
