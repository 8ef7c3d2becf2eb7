"""GPTQ (Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023; github.com/IST-DASLab/gptq, ``gptq.py``
``GPTQ.fasterquant`` with the ``Quantizer`` of ``quant.py``), docs/formulation.md §2.3 and §5.5.

Port of ``fasterquant`` on the OBS loop it shares with ``sparsegpt`` (``_obs.py``):

* the per-channel quantiser is fitted on the whole W (before dead columns are zeroed);
* dead inputs (diag(XᵀX) = 0): H_jj = 1 and W[:, j] = 0;
* ``act_order``: columns permuted by descending diag(H), and the result permuted back;
* H += λ·mean(diag H)·I (λ = ``damping``, the authors' ``percdamp``), Hinv = the upper Cholesky
  factor of H⁻¹;
* columns in blocks of ``blocksize`` (128) with lazy batch updates; column c is quantised to
  ``scale·(clamp(round(w/scale) + zero, 0, 2^bits − 1) − zero)`` and its error fed forward;
* with groups (``group_size``), the scale and zero point are refitted at each group start on the
  columns of W as the authors' loop has them then: updated by the earlier blocks, but not yet by the
  columns before it in the same block (they coincide when the group size is a multiple of the
  block size); ``static_groups=True`` fits every group once, before any update, as the authors'
  option of that name.

Deviations: float64 NumPy (the authors use float32 on a GPU), no ``mse`` grid search, no
``trits``.
"""

from __future__ import annotations

import numpy as np

from .. import _backend as bk
from .._validation import check_int
from ..objective import diagonal_objective
from ..problem import Decomposition, Problem
from ..quantized import QuantizedMatrix, QuantLayout, fit_scale_zero, quant_layout, quantize_codes
from ..registry import register_method
from ._obs import dead_inputs, gptq_hessian, input_diagonal, obs_sweep, upper_cholesky_of_inverse


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return bool(value)


def _layout(shape: tuple[int, int], options: dict) -> QuantLayout:
    """What ``gptq`` stores: a column-to-group index only with ``act_order`` and dynamic groups."""
    act_order = _flag("act_order", options["act_order"])
    static = _flag("static_groups", options["static_groups"])
    if static and options["group_size"] is None:
        raise ValueError("static_groups=True needs a group_size")
    check_int("blocksize", options["blocksize"], 1)
    return quant_layout(shape, options["bits"], options["group_size"], options["symmetric"],
                        group_index=act_order and not static)


def _start(problem: Problem, maxq: int, sym: bool, gs: int | None, static_groups: bool,
           act_order: bool) -> tuple:
    """(W, scale, zero, dead, groups, perm): W in float64 with the dead inputs zeroed (and its columns
    permuted by descending diag(H) with ``act_order``: ``perm``, else ``None``), the per-channel
    scale and zero point fitted on W as given, and with ``static_groups`` those of every group."""
    W = bk.to_numpy(problem.W).astype(np.float64, copy=True)
    n = W.shape[1]
    scale, zero = fit_scale_zero(W, maxq, sym)  # per channel, on W as given
    dead = dead_inputs(problem)
    W[:, dead] = 0.0
    groups = []
    if static_groups:
        groups = [fit_scale_zero(W[:, g:g + gs], maxq, sym) for g in range(0, n, gs)]
    perm = None
    if act_order:
        diag = np.where(dead, 1.0, input_diagonal(problem))  # diag H before damping
        perm = np.argsort(-diag, kind="stable")
        W = np.ascontiguousarray(W[:, perm])  # fancy indexing along columns returns F order
    return W, scale, zero, dead, groups, perm


class _ColumnCodes:
    """The column rule of :func:`slabopt.solvers._obs.obs_sweep`: column c (of the permuted order)
    gets the codes q = clamp(round(w/s) + z, 0, 2^bits − 1) with the scale s and zero point z in
    force and is replaced by s·(q − z). With groups the pair is refitted at each group start on
    ``W`` as the sweep has it then (dynamic groups, kept in :attr:`fitted`), or taken from the
    precomputed ``groups`` of the column's original position (``static_groups``)."""

    def __init__(self, W: np.ndarray, maxq: int, sym: bool, gs: int | None, scale: np.ndarray,
                 zero: np.ndarray, groups: list, perm: np.ndarray | None, static_groups: bool):
        self.W, self.maxq, self.sym, self.gs = W, maxq, sym, gs
        self.groups, self.perm, self.static_groups = groups, perm, static_groups
        self.codes = np.zeros(W.shape, dtype=np.uint8)
        self.fitted: list[tuple[np.ndarray, np.ndarray]] = []
        self.current = [scale, zero]

    def __call__(self, c: int, i: int, W1: np.ndarray, Hinv1: np.ndarray) -> np.ndarray:
        gs = self.gs
        if gs is not None:
            if not self.static_groups:
                if c % gs == 0:  # refit on W as the authors' loop has it (see the module note)
                    self.current[:] = fit_scale_zero(self.W[:, c:c + gs], self.maxq, self.sym)
                    self.fitted.append((self.current[0], self.current[1]))
            else:
                self.current[:] = self.groups[(self.perm[c] if self.perm is not None else c) // gs]
        s, z = self.current
        code = quantize_codes(W1[:, i], s, z, self.maxq)
        self.codes[:, c] = code
        return s * (code - z)


def _quantized(problem: Problem, lay: QuantLayout, rule: _ColumnCodes, scale: np.ndarray,
               zero: np.ndarray) -> QuantizedMatrix:
    """The codes in the original column order with their scales and zero points (per row, or per
    group with the column-to-group index of dynamic groups in activation order)."""
    gs, perm, static_groups = lay.group_size, rule.perm, rule.static_groups
    group_index = None
    if gs is None:
        scales, zeros = scale[:, None], zero[:, None]
    else:
        pairs = rule.groups if static_groups else rule.fitted
        scales = np.stack([p[0] for p in pairs], axis=1)
        zeros = np.stack([p[1] for p in pairs], axis=1)
        if perm is not None and not static_groups:
            group_index = np.argsort(perm) // gs  # the group of column j: its activation-order rank // gs
    codes = rule.codes
    if perm is not None:
        codes = codes[:, np.argsort(perm)]
    return QuantizedMatrix.from_numpy(codes, scales, None if lay.symmetric else zeros, lay.bits, gs,
                                      group_index, like=problem.W)


@register_method(
    "gptq",
    description="GPTQ: integer codes with OBS error feedback through H, blocks of 128 (Frantar et al. 2023)",
    components=("quant",),
    needs_gram=True,
    quant_layout=_layout,
)
def gptq(
    problem: Problem,
    *,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool | None = False,
    act_order: bool = False,
    static_groups: bool = False,
    blocksize: int = 128,
) -> Decomposition:
    """GPTQ quantisation of W to ``bits``-bit codes with per-row (``group_size=None``) or per-group
    scales and zero points (``symmetric=False``, the authors' default) or scales only
    (``symmetric=True``; ``None`` = symmetric per channel, asymmetric with groups)."""
    lay = _layout(problem.shape, dict(bits=bits, group_size=group_size, symmetric=symmetric,
                                      act_order=act_order, static_groups=static_groups,
                                      blocksize=blocksize))
    sym, gs, maxq = lay.symmetric, lay.group_size, 2**lay.bits - 1
    W, scale, zero, dead, groups, perm = _start(problem, maxq, sym, gs, static_groups, act_order)
    Hinv = upper_cholesky_of_inverse(gptq_hessian(problem, dead, perm), via_cholesky=True)
    rule = _ColumnCodes(W, maxq, sym, gs, scale, zero, groups, perm, static_groups)
    obs_sweep(W, Hinv, blocksize, rule)
    quant = _quantized(problem, lay, rule, scale, zero)
    f = diagonal_objective(problem.W - quant.dequantize(), problem.d)
    problem.report(1, f)
    return Decomposition(quant=quant, history=[f], message=f"one-shot GPTQ, {lay.describe()}")
