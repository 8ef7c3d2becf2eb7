"""Exact weighted two-level quantiser (docs/formulation.md §2.1 and §6, Lemma 1).

For each row w (length n) and non-negative weights ω, find levels ``low ≤ high`` minimising

    f(a, b) = Σ_k ω_k · min{(w_k − a)², (w_k − b)²}.

By Lemma 1 an optimal pair is the pair of weighted means of a *split* of the sorted row into a
lower and an upper group, so one sort, prefix sums and an arg-max over the n − 1 splits give the
exact optimum in O(n log n) per row. Everything is vectorised over rows (no Python loop).

Conventions (documented, tested):

* The row is centred at its weighted mean μ first; the split maximising the between-group sum of
  squares ``S1² · Ω / (Ω_lo · Ω_hi)`` (S1 = Σ_lo ω (w − μ), Ω = total weight) is chosen; this is
  the within-group cost written without cancellation. Ties between splits go to the first one.
* **Zero weights.** Entries with ω_k = 0 never influence the levels. A row whose weights are all
  zero is fitted with unit weights (every pair of levels has cost 0 there, so any rule is optimal;
  this one keeps the levels meaningful for dead inputs).
* **Degenerate rows.** n = 1, all-equal rows and rows with a single positive weight have
  ``low == high ==`` the weighted mean.
* **Assignment.** ``is_high = w >= (low + high)/2`` where ``high > low`` (nearest level, a tie at the
  midpoint goes to ``high``), and all ``False`` where ``low == high``. Zero-weight entries follow
  the same nearest-level rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend as bk


def _as_array(w: Any) -> Any:
    try:
        bk.library_name(w)
    except TypeError:
        w = np.asarray(w, dtype=np.float64)
    return w


def two_level_quantize(w: Any, weights: Any = None) -> tuple[Any, Any, Any]:
    """Exact weighted two-level quantiser of each row of ``w`` (Lemma 1, docs/formulation.md §6).

    Parameters
    ----------
    w : 1-D (n) or 2-D (m×n) real array (NumPy, PyTorch or CuPy); 2-D rows are independent
    weights : ``None`` (all ones) or non-negative weights broadcastable to ``w``'s shape
        (e.g. an n-vector of column weights d_j², or an m×n array)

    Returns
    -------
    low, high : per-row levels (shape ``()`` for 1-D input, ``(m,)`` for 2-D), ``low <= high``
    is_high : boolean array shaped like ``w``: True where the entry is coded by ``high``
    """
    W, squeeze = _rows(w)
    xp = bk.namespace(W)
    low, high = _levels(W, _row_weights(W, weights, squeeze))
    mid = (low + high) / 2
    is_high = (W >= mid) & (high > low)
    low, high = xp.reshape(low, (-1,)), xp.reshape(high, (-1,))
    if squeeze:
        return low[0], high[0], is_high[0, :]
    return low, high, is_high


def _rows(w: Any) -> tuple[Any, bool]:
    """(W, squeeze): ``w`` as an m×n float32/float64 array (a 1-D ``w`` as one row, ``squeeze``)."""
    w = _as_array(w)
    xp = bk.namespace(w)
    if w.ndim not in (1, 2):
        raise ValueError(f"w must be 1-D or 2-D, got {w.ndim}-D")
    if w.shape[-1] == 0:
        raise ValueError("w must have at least one entry per row")
    squeeze = w.ndim == 1
    W = xp.reshape(w, (1, -1)) if squeeze else w
    if bk.dtype_name(W) not in ("float32", "float64"):
        W = xp.astype(W, xp.float32 if bk.dtype_name(W) in ("float16", "bfloat16") else xp.float64)
    return W, squeeze


def _row_weights(W: Any, weights: Any, squeeze: bool) -> Any:
    """ω as an m×n array of W's dtype: ones for ``None``, unit weights in rows whose weights are all
    zero; negative weights raise ValueError."""
    xp = bk.namespace(W)
    m, n = W.shape
    if weights is None:
        return xp.ones((m, n), dtype=W.dtype, device=bk.device(W))
    om = xp.astype(bk.convert_like(_as_array(weights), W), W.dtype)
    om = xp.broadcast_to(xp.reshape(om, (1, -1)) if (squeeze and om.ndim == 1) else om, (m, n))
    if bool(xp.any(om < 0)):
        raise ValueError("weights must be non-negative")
    tot0 = xp.sum(om, axis=1, keepdims=True)
    return xp.where(tot0 > 0, om, xp.ones_like(om))  # all-zero rows: unit weights


def _levels(W: Any, om: Any) -> tuple[Any, Any]:
    """(low, high), m×1: the weighted means of the lower and the upper group of the best split of
    each sorted row (Lemma 1); both the weighted mean μ of the row when n = 1 or no split gains."""
    xp = bk.namespace(W)
    order = xp.argsort(W, axis=1)
    ws = xp.take_along_axis(W, order, axis=1)
    os_ = xp.take_along_axis(om, order, axis=1)
    total = xp.sum(os_, axis=1, keepdims=True)  # > 0
    mu = xp.sum(os_ * ws, axis=1, keepdims=True) / total
    if W.shape[1] == 1:
        return mu, mu
    return _best_split(ws - mu, os_, total, mu)


def _best_split(c: Any, os_: Any, total: Any, mu: Any) -> tuple[Any, Any]:
    """The split t of the sorted, centred rows c = w − μ (weights ``os_``) maximising the
    between-group sum of squares S1² · Ω / (Ω_lo · Ω_hi) (S1 = Σ_lo ω c, Ω = ``total``; the first t
    on ties), and its levels low = μ + S1/Ω_lo, high = μ − S1/Ω_hi (μ, μ where no split gains)."""
    xp = bk.namespace(c)
    lo_w = xp.cumulative_sum(os_, axis=1)[:, :-1]  # Ω_lo of split t (lower group 0..t)
    lo_s = xp.cumulative_sum(os_ * c, axis=1)[:, :-1]  # S1 of split t
    hi_w = total - lo_w
    valid = (lo_w > 0) & (hi_w > 0)
    safe = xp.where(valid, lo_w * hi_w, xp.ones_like(lo_w))
    gain = xp.where(valid, lo_s * lo_s * total / safe, xp.zeros_like(lo_w))
    t = xp.argmax(gain, axis=1, keepdims=True)
    best = xp.take_along_axis(gain, t, axis=1)
    Wl = xp.take_along_axis(lo_w, t, axis=1)
    Sl = xp.take_along_axis(lo_s, t, axis=1)
    Wh = total - Wl
    split = best > 0
    one = xp.ones_like(Wl)
    low = mu + xp.where(split, Sl / xp.where(split, Wl, one), xp.zeros_like(Wl))
    high = mu - xp.where(split, Sl / xp.where(split, Wh, one), xp.zeros_like(Wh))
    return xp.minimum(low, high), xp.maximum(low, high)


def two_level_cost(w: Any, low: Any, high: Any, weights: Any = None) -> Any:
    """Per-row Σ ω min{(w − low)², (w − high)²} (the Lemma-1 objective; a helper for tests)."""
    w = _as_array(w)
    xp = bk.namespace(w)
    W = xp.reshape(w, (1, -1)) if w.ndim == 1 else w
    lo = xp.reshape(xp.asarray(low), (-1, 1))
    hi = xp.reshape(xp.asarray(high), (-1, 1))
    e = xp.minimum((W - lo) ** 2, (W - hi) ** 2)
    if weights is not None:
        e = e * bk.convert_like(_as_array(weights), W)
    out = xp.sum(e, axis=1)
    return out[0] if w.ndim == 1 else out
