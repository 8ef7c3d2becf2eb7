"""``slabopt.solve``: validate, dispatch to a registered solver, package one result."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from . import _backend as bk
from ._validation import as_matrix, check_int, check_real, resolve_activations
from .budget import Budget, InfeasibleBudgetError, _at_most, storage_bits
from .budget import budget as make_budget
from .objective import blockwise_objectives
from .problem import Problem
from .registry import get_method, methods
from .result import SolveResult, SparseMatrix
from .signs import pack_signs
from .solvers.sparse_refit import quantize_sparse_part
from .weight import dense_weight

DEFAULT_RATIO = object()  # ratio not given: 0.5, or the ratio that ``bits`` implies


def _check_options(info: Any, options: dict) -> None:
    accepted = info.option_names()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = ", ".join(accepted) if accepted else "none"
        raise TypeError(
            f"method {info.name!r} got unknown option(s) {', '.join(unknown)}; its options are: {listed}"
        )


def solve(W: Any, X: Any = None, *, ratio: Any = DEFAULT_RATIO, bits: float | None = None, rank: int = 64,
          method: str = "alternating", pattern: str = "row", value_bits: int = 16, index_bits: int = 0,
          positions: str | None = None, sparse_bits: int | str | None = None, sparse_refit: int = 2,
          l_group: int | None = None, max_iter: int | None = None, tol: float = 1e-6, seed: int = 0,
          col_norms: Any = None, gram: Any = None, damping: float = 0.01,
          callback: Callable[[int, float], Any] | None = None, progress: bool = False,
          **options: Any) -> SolveResult:
    """Decompose W ≈ Ŵ = S + L ⊙ B at a storage ratio (docs/formulation.md §1-§5).

    Parameters
    ----------
    W : (m, n) NumPy array, PyTorch tensor (CPU/CUDA), CuPy array or another array-API array (e.g.
        ``array_api_strict``; needs ``array-api-compat``); float16/bfloat16/float32/float64. Computation
        runs in float64 for float64 input and float32 otherwise. Not modified.
    X : (N, n) calibration inputs of the layer, or ``None`` (unweighted, d = 1). Alternatively give
        ``col_norms`` (d_j = ‖X[:, j]‖₂) or ``gram`` (XᵀX, undamped) -- at most one of the three.
    ratio : fraction of dense b-bit storage to remove, in (0, 1) (default 0.5); may be ``None`` for N:M
        patterns and for the quantisers "rtn" and "gptq", whose bits are fixed by their options (a given
        ratio is then checked: ``InfeasibleBudgetError`` if the quantiser costs more)
    bits : instead of ``ratio``, B bits per weight on disk (ratio = 1 − B/b), the positions of S counted as
        stored (``positions`` then defaults to "rice" for "row", else "bitmask"); "rtn", "gptq": code width
    rank : r, the rank of L (0 ≤ r ≤ min(m, n))
    method : a registered solver name, see :func:`slabopt.methods`
    pattern : "row" (equal count per row), "global", or "N:M" such as "2:4"
    value_bits, index_bits : b and ι of the bit budget (docs/formulation.md §4)
    positions : "index" (the default without ``bits``: the positions of S cost ι bits per value; ι = 0
        is the paper's convention), "rice" (Golomb–Rice codes of the gaps in each row, counted exactly,
        docs/formulation.md §4.8), "bitmask" (the m·n-bit mask, or the N:M codes, that the saved format
        stores: the ratio on disk; §4.6) or "auto" (the cheapest: "rice" for "row", else "bitmask")
    sparse_bits : q in 2..8 stores the kept values of S as q-bit codes with one b-bit scale per row
        (``result.sparse_codes``; the budget counts q bits per value); ``None`` (default): b bits;
        ``"auto"``: q = round(a) + 1 for the a bits per weight the budget leaves for them
        (docs/formulation.md §4.7). "row" and N:M patterns only.
    sparse_refit : with ``sparse_bits``, rounds of exact binary / low-rank / code steps that refit
        L ⊙ B to the coded S after the solve (docs/formulation.md §5.6; never raises f)
    l_group : G stores L with its own rank-r factors per group of G input columns (U m×(r·⌈n/G⌉),
        V n×(r·⌈n/G⌉), the factors of column j only in its group's columns; b·r·(m·⌈n/G⌉ + n) bits,
        docs/formulation.md §2.5); methods with ``grouped_lowrank`` only ("slab_obs"). ``None``: one L
    max_iter : iteration limit of the method's main loop; ``None``: its registered ``default_max_iter``
    tol : relative objective change that stops early
    seed : seed of every random choice (randomized SVD sketches)
    damping : λ of H = XᵀX + λ·mean(diag)·I in the full objective
    callback : called as ``callback(iteration, objective)`` after each iteration
    progress : show a tqdm progress bar over the iterations (needs ``tqdm``)
    **options : method-specific options, e.g. ``variant="paper"`` ("alternating"), ``group_size`` ("gptq")

    Returns
    -------
    SolveResult whose arrays are in W's library and on W's device.
    """
    start = time.perf_counter()
    Wc = _compute_copy(W_in := as_matrix("W", W))
    options, args = dict(options), dict(pattern=pattern, value_bits=value_bits, index_bits=index_bits,
                                        positions=positions, sparse_bits=sparse_bits, l_group=l_group)
    info, ratio, positions, layout, bud = _plan(tuple(Wc.shape), ratio, bits, rank, method, options, args)
    loop = _loop_settings(info, max_iter, seed, tol, damping, sparse_refit)
    problem, bar = _problem(Wc, (X, col_norms, gram), bud, loop, callback, info.name if progress else None)
    dec = _run(info, problem, options, loop["sparse_refit"], bar)
    settings = _recorded(dict(args, ratio=ratio, rank=rank, positions=positions), bud, layout, loop, options)
    return _package(problem, dec, info.name, W_in.dtype, start, settings)


def _compute_copy(W: Any) -> Any:
    """A copy of W in the compute dtype: float64 for float64 input, float32 otherwise."""
    xp = bk.namespace(W)
    return xp.astype(W, bk.compute_dtype(xp, W), copy=True)


def _loop_settings(info: Any, max_iter: int | None, seed: int, tol: float, damping: float,
                   sparse_refit: int) -> dict:
    """The checked settings of the solver's loop (``max_iter`` ``None``: the method's default)."""
    return dict(max_iter=info.default_max_iter if max_iter is None else check_int("max_iter", max_iter, 1),
                seed=check_int("seed", seed, 0), tol=check_real("tol", tol, 0.0),
                damping=check_real("damping", damping, 0.0),
                sparse_refit=check_int("sparse_refit", sparse_refit, 0))


def _problem(Wc: Any, activations: tuple, bud: Budget, loop: dict, callback: Callable | None,
             progress: str | None) -> tuple[Problem, Any]:
    """The :class:`Problem` of the compute copy ``Wc`` with its column weights d (rescaled to max 1)
    from ``activations`` (X, col_norms, gram), and the progress bar (``progress``: its name) or
    ``None``; the problem reports f in the user's units, f·d_scale²."""
    xp = bk.namespace(Wc)
    d, Xc, G = resolve_activations(Wc, *activations, need_gram=False)
    d_scale = bk.to_float(xp.max(d))
    report = callback if progress is None else _with_progress(callback, loop["max_iter"], progress)
    problem = Problem(
        W=Wc,
        d=d / d_scale,
        d_scale=d_scale,
        budget=bud,
        X=Xc,
        raw_gram=G,
        seed=loop["seed"],
        max_iter=loop["max_iter"],
        tol=loop["tol"],
        damping=loop["damping"],
        callback=None if report is None else (lambda it, f: report(it, f * d_scale**2)),
    )
    return problem, None if progress is None else report


def _run(info: Any, problem: Problem, options: dict, sparse_refit: int, bar: Any) -> Any:
    """The method's decomposition, with the values of S coded afterwards when the budget stores them
    as q-bit codes and the method did not (:func:`slabopt.solvers.sparse_refit.quantize_sparse_part`);
    closes the progress ``bar``."""
    bud = problem.budget
    try:
        dec = info.func(problem, **options)
        if bud.sparse_bits is not None and dec.sparse_codes is None:
            dec = quantize_sparse_part(problem, dec, bud.sparse_bits, sparse_refit)
    finally:
        if bar is not None:
            bar.close()
    return dec


def _recorded(given: dict, bud: Budget, layout: Any, loop: dict, options: dict) -> dict:
    """``result.settings``: the settings in force (``given``: ratio, rank, the budget's keywords,
    positions), the loop's and the method's options, and the quantiser's layout."""
    sparse_bits, l_group = given["sparse_bits"], given["l_group"]
    coded = {} if sparse_bits is None else {"sparse_bits": sparse_bits, "sparse_refit": loop["sparse_refit"],
                                            "sparse_bits_used": bud.sparse_bits}
    quant = {} if layout is None else {"quant": dict(bits=layout.bits, group_size=layout.group_size,
                                                     symmetric=layout.symmetric,
                                                     group_index=layout.group_index)}
    return dict(ratio=given["ratio"], rank=given["rank"], pattern=str(bud.pattern),
                value_bits=given["value_bits"], index_bits=given["index_bits"], positions=given["positions"],
                **coded, **({} if l_group is None else {"l_group": l_group}), max_iter=loop["max_iter"],
                tol=loop["tol"], seed=loop["seed"], damping=loop["damping"], **options, **quant)


def layer_budget(shape: tuple[int, int], *, ratio: Any = DEFAULT_RATIO, bits: float | None = None,
                 rank: int = 64, method: str = "alternating", pattern: str = "row", value_bits: int = 16,
                 index_bits: int = 0, positions: str | None = None, sparse_bits: int | str | None = None,
                 l_group: int | None = None, **options: Any) -> Budget:
    """The :class:`Budget` that :func:`solve` would use for an m×n layer with these settings,
    after every check :func:`solve` makes before it reads W (method, its options, ratio or bits,
    rank, pattern, position code, codes of S, groups of L): settings can be checked for every layer
    shape of a model before any matrix is solved. Raises what :func:`solve` raises."""
    shape = (check_int("m", shape[0], 1), check_int("n", shape[1], 1))
    return _plan(shape, ratio, bits, rank, method, dict(options), dict(
        pattern=pattern, value_bits=value_bits, index_bits=index_bits, positions=positions,
        sparse_bits=sparse_bits, l_group=l_group))[-1]


def _plan(shape: tuple[int, int], ratio: Any, bits: float | None, rank: int, method: str, options: dict,
          args: dict) -> tuple[Any, float | None, str, Any, Budget]:
    """(method info, ratio, positions, quantiser layout, budget) of a layer; ``options`` may gain
    the quantiser's ``bits`` (:func:`_ratio_and_positions`); ``args``: the budget's keywords."""
    info = get_method(method)
    ratio, positions = _ratio_and_positions(info, ratio, bits, args["positions"], args["pattern"],
                                            args["value_bits"], options)
    _check_options(info, options)
    layout = None if info.quant_layout is None else info.quant_layout(shape, info.options_in_force(options))
    bud = _layer_budget(info, shape, ratio, bits, rank, dict(args, positions=positions,
                                                            components=info.components, quant=layout))
    return info, ratio, positions, layout, bud


def _layer_budget(info: Any, shape: tuple[int, int], ratio: float | None, bits: float | None, rank: int,
                  args: dict) -> Any:
    """The :class:`Budget` of the layer (``args``: the keywords of :func:`slabopt.budget`); when the
    budget was given as ``bits`` and cannot be met, the error says so in bits per weight."""
    l_group = args["l_group"]
    if l_group is not None and not info.grouped_lowrank:
        grouped = ", ".join(n for n in methods() if get_method(n).grouped_lowrank)
        raise ValueError(f"method {info.name!r} stores one L; l_group is taken by: {grouped}")
    try:
        return _within_ratio(make_budget(shape, ratio, rank, **args), ratio)
    except InfeasibleBudgetError as exc:
        if bits is None or "quant" in info.components:
            raise
        r = rank if "lowrank" in info.components else 0
        floor = storage_bits(shape, 0, r, args["value_bits"], binary="binary" in info.components and r > 0,
                             l_group=l_group)
        raise InfeasibleBudgetError(
            f"{bits} bits per weight is not reachable for shape {shape} with rank {rank}"
            f"{'' if l_group is None else f' and l_group {l_group}'}: the signs and the factors of L alone "
            f"cost {floor / (shape[0] * shape[1]):.4f} bits per weight; ask for more bits, a lower "
            "rank or larger groups of L") from exc


def _within_ratio(bud: Any, ratio: float | None) -> Any:
    """``bud``, unless its pattern fixes nnz(S) (N:M) at more bits than ``ratio`` allows: then one
    error saying what the pattern stores and which ratios it meets."""
    if ratio is None or bud.pattern.kind != "nm":
        return bud
    allowed = (1 - Fraction(ratio)) * bud.dense_bits
    if bud.bits <= allowed:
        return bud
    own = _at_most(1 - Fraction(bud.bits, bud.dense_bits))
    raise InfeasibleBudgetError(
        f"pattern {bud.pattern} stores {bud.bits} bits, more than the {math.floor(allowed)} bits that ratio "
        f"{ratio} allows; ask ratio <= {own}, or ratio=None, which N:M patterns take")


def _ratio_and_positions(info: Any, ratio: Any, bits: float | None, positions: str | None,
                         pattern: str, value_bits: int, options: dict) -> tuple[float | None, str]:
    """The ratio and position code in force: ``bits`` B (not with ``ratio``) becomes ratio
    1 − B/b with positions counted on disk; a quantiser's ``bits`` goes to its options (its code
    width), except for quantisers without that option (billm, arb: their size is fixed by their
    algorithm), whose upper-bound bits the budget checks against B like a ratio."""
    if bits is not None and "quant" in info.components and "bits" in info.option_names():
        options["bits"] = bits
        bits = None
    if bits is None:
        return (0.5 if ratio is DEFAULT_RATIO else ratio), ("index" if positions is None else positions)
    if ratio is not DEFAULT_RATIO:
        raise ValueError("give the budget as ratio or as bits (per weight on disk), not both")
    bits = check_real("bits", bits, 0.0, float(value_bits))
    if positions is None:
        positions = "rice" if str(pattern) == "row" else "bitmask"
    if positions == "index":
        raise ValueError('bits counts every stored bit; positions="index" leaves the positions of S out '
                         '(use "rice" or "bitmask")')
    return 1.0 - bits / value_bits, positions


def _with_progress(callback: Callable | None, total: int, name: str) -> Callable:
    """A callback that advances a tqdm bar (showing f) and then calls ``callback``."""
    try:
        from tqdm.auto import tqdm
    except ImportError as exc:  # pragma: no cover
        raise ImportError("progress=True needs tqdm: pip install tqdm") from exc
    bar = tqdm(total=total, desc=name, unit="it", leave=False)

    def report(it: int, f: float) -> None:
        bar.update(it - bar.n)
        bar.set_postfix(f=f"{f:.4g}")
        if callback is not None:
            callback(it, f)

    report.close = bar.close  # type: ignore[attr-defined]
    return report


def _weight_rows(dec: Any, W: Any) -> Callable[[slice], Any]:
    """Ŵ[rows] of a solver's parts (S taken on its mask only, as it is stored), for
    :func:`slabopt.objective.blockwise_objectives`."""
    xp = bk.namespace(W)
    zero = xp.zeros((), dtype=W.dtype, device=bk.device(W))

    def rows_of(rows: slice) -> Any:
        if dec.mask is None:
            S = xp.zeros((rows.stop - rows.start, W.shape[1]), dtype=W.dtype, device=bk.device(W))
        else:
            S = xp.where(dec.mask[rows, :], dec.S[rows, :], zero)
        return dense_weight(
            S,
            U=None if dec.U is None else dec.U[rows, :],
            V=dec.V,
            B=None if dec.B is None else dec.B[rows, :],
            levels=None if dec.levels is None else dec.levels[:, rows],
            row_offset=None if dec.row_offset is None else dec.row_offset[rows],
            quant=dec.quant,
        )

    return rows_of


def _package(problem: Problem, dec: Any, name: str, dtype: Any, start: float, settings: dict) -> SolveResult:
    """Compact S, pack B, count the achieved bits and evaluate the objectives of Ŵ."""
    xp, bud = problem.xp, problem.budget
    W = problem.W
    m, n = problem.shape
    if dec.mask is None:
        no_entries = xp.zeros((m, n), dtype=xp.bool, device=bk.device(W))
        sparse = SparseMatrix.from_mask(xp.zeros_like(W), no_entries)
    else:
        sparse = SparseMatrix.from_mask(dec.S, dec.mask)
    rank = 0 if dec.U is None else int(dec.U.shape[1]) // bud.l_groups
    row_values = (0 if dec.levels is None else 2) + (0 if dec.row_offset is None else 1)
    layout = None if dec.quant is None else dec.quant.layout
    if layout != bud.quant:
        raise RuntimeError(f"method {name!r} stored a quantised part {layout} but declared {bud.quant}")
    positions = bud.exact_position_bits(bk.to_numpy(sparse.indptr), bk.to_numpy(sparse.indices))
    bits = storage_bits((m, n), sparse.nnz, rank, bud.value_bits, bud.index_bits, dec.B is not None,
                        row_values, quant=layout, position_bits=positions,
                        sparse_bits=None if dec.sparse_codes is None else dec.sparse_codes.bits,
                        l_group=bud.l_group)
    scale2 = problem.d_scale**2
    whole = None if dec.quant is None else [slice(0, m)]  # a quantised part is added as a whole
    objs = blockwise_objectives(W, _weight_rows(dec, W), problem.d, problem.gram, problem.damping, whole)
    zero = blockwise_objectives(W, lambda rows: 0, problem.d, blocks=whole).diagonal
    return SolveResult(
        method=name,
        shape=(m, n),
        sparse=sparse,
        U=dec.U,
        V=dec.V,
        signs_packed=None if dec.B is None else pack_signs(dec.B),
        bits=bits,
        dense_bits=bud.dense_bits,
        requested_ratio=bud.requested_ratio,
        budget=bud,
        objective=objs.diagonal * scale2,
        objective_full=None if objs.full is None else objs.full * scale2,
        objective_zero=zero * scale2,
        history=[h * scale2 for h in dec.history],
        n_iter=len(dec.history),
        converged=dec.converged,
        message=dec.message,
        settings=settings,
        wall_time=time.perf_counter() - start,
        dtype=dtype,
        info=dec.info,
        levels=dec.levels,
        row_offset=dec.row_offset,
        quant=dec.quant,
        sparse_codes=dec.sparse_codes,
    )
