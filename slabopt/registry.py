"""Solver registry: ``solve(..., method=NAME)`` looks the name up here.

A solver is a function ``solver(problem, **options) -> Decomposition``: ``problem`` is a validated
:class:`slabopt.problem.Problem`, ``options`` the method's own keywords. Register your own with
:func:`register_method` -- no edit of the package needed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._validation import check_int
from .budget import COMPONENTS

DEFAULT_MAX_ITER = 20
ALIASES = {"slab": "alternating"}  # other names of registered methods (the command line's ``slab``)


@dataclass(frozen=True)
class MethodInfo:
    """A registered solver: its function, one-line description, what it stores, its iteration
    limit when ``solve(max_iter=None)`` (the authors' default for baselines), whether its algorithm
    needs the Gram matrix XᵀX (adapters then collect it; d alone is not enough), and whether it
    meets the requested budget (``False``: it reaches its own rank and nnz, which are counted).
    ``quant_layout`` (methods with the "quant" component): ``quant_layout(shape, options)`` gives
    the :class:`slabopt.quantized.QuantLayout` the method will store for the method options in
    force (``options``: every keyword-only option, defaults filled in)."""

    name: str
    func: Callable
    description: str
    components: frozenset[str]
    default_max_iter: int = DEFAULT_MAX_ITER
    needs_gram: bool = False
    fixed_budget: bool = True
    quant_layout: Callable | None = None
    grouped_lowrank: bool = False

    def _options(self) -> list[inspect.Parameter]:
        params = list(inspect.signature(self.func).parameters.values())[1:]
        return [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def option_names(self) -> list[str]:
        return [p.name for p in self._options()]

    def options_in_force(self, options: dict[str, Any]) -> dict[str, Any]:
        """Every keyword-only option of the method: ``options`` over the function's defaults."""
        defaults = {p.name: p.default for p in self._options() if p.default is not inspect.Parameter.empty}
        return {**defaults, **options}


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    func: Callable | None = None,
    *,
    description: str,
    components: tuple[str, ...] | frozenset[str] = ("sparse", "lowrank", "binary"),
    max_iter: int = DEFAULT_MAX_ITER,
    needs_gram: bool = False,
    fixed_budget: bool = True,
    quant_layout: Callable | None = None,
    grouped_lowrank: bool = False,
    overwrite: bool = False,
) -> Callable:
    """Register ``func`` as ``method=name`` (usable as a decorator).

    ``components`` says which parts the method stores and therefore how its bits are counted
    (docs/formulation.md §4.2): any non-empty subset of {"sparse", "lowrank", "binary", "twolevel",
    "offset", "quant"}. ``max_iter`` is the method's iteration limit when the caller gives none; the solver
    reads the limit in force from ``problem.max_iter``. ``needs_gram``: the method uses XᵀX
    (``problem.gram``), so callers should pass X or ``gram``, not only d. ``fixed_budget=False``:
    the method does not meet the requested (r, k) but reaches its own, whose bits are counted
    exactly. ``quant_layout`` is required with the "quant" component: a function
    ``(shape, options) -> QuantLayout`` that checks the quantiser options (``options`` holds every
    option in force) and says what the method stores, so that ``solve`` can count its bits before
    solving. ``grouped_lowrank``: the method can store L with its own factors per group of input
    columns (``solve(l_group=G)``, docs/formulation.md §2.5). Method options must be keyword-only
    parameters of ``func``.
    """
    max_iter = check_int("max_iter", max_iter, 1)
    comps = frozenset(components)
    if not comps or comps - COMPONENTS:
        raise ValueError(f"components must be a non-empty subset of {sorted(COMPONENTS)}")
    if not isinstance(name, str) or not name:
        raise TypeError("method name must be a non-empty string")
    if ("quant" in comps) != (quant_layout is not None):
        raise ValueError('give quant_layout exactly when "quant" is among the components')

    def decorate(f: Callable) -> Callable:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"method {name!r} is already registered (pass overwrite=True)")
        _REGISTRY[name] = MethodInfo(name, f, description, comps, max_iter, bool(needs_gram),
                                     bool(fixed_budget), quant_layout, bool(grouped_lowrank))
        return f

    return decorate if func is None else decorate(func)


def get_method(name: str) -> MethodInfo:
    """The registered method ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return _REGISTRY[ALIASES.get(name, name)]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown method {name!r}; known methods: {known}") from None


def methods() -> dict[str, str]:
    """Registered method names with their one-line descriptions, and the aliases (``ALIASES``)."""
    named = {name: info.description for name, info in _REGISTRY.items()}
    named.update({alias: f"the same as {target!r}" for alias, target in ALIASES.items()
                  if target in _REGISTRY})
    return dict(sorted(named.items()))
