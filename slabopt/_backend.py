"""The one place that knows which array library an array comes from.

The solvers are written once against the Python array API standard; this module supplies the
namespace (through ``array-api-compat`` when it is installed, NumPy's own namespace otherwise -- NumPy
>= 2 implements the standard, so the core needs nothing beyond NumPy and SciPy) plus the handful of
operations the standard lacks: partial (top-k) selection, scattering a boolean mask, seeded random
normals that are identical on every backend, and moving arrays between libraries.

NumPy, PyTorch and CuPy get their own fast calls for those operations (``argpartition``, ``topk``,
fancy-index assignment); any other array-API library (e.g. ``array_api_strict``, the standard's
reference, which refuses everything outside it) gets a fallback written with standard functions
only (``sort``, ``argsort``, ``searchsorted``, ``take``, ``where``). The CuPy-specific lines are
``to_numpy`` (``.get()``, the device-to-host copy) and ``_partitioning`` (``cupy.argpartition``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

try:  # pragma: no cover - exercised implicitly on every import
    import array_api_compat as _compat
except ImportError:  # pragma: no cover - core install without extras
    _compat = None

FLOAT_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


FANCY_SETITEM = ("numpy", "torch", "cupy")  # libraries that assign through integer index arrays


def library_name(x: Any) -> str:
    """``"numpy"``, ``"torch"`` or ``"cupy"`` for an array of those, the namespace's module name
    (e.g. ``"array_api_strict"``) for any other array-API array, else ``TypeError``."""
    module = type(x).__module__.split(".")[0]
    if isinstance(x, np.ndarray):
        return "numpy"
    if module in ("torch", "cupy"):
        return module
    if _compat is not None and _compat.is_array_api_obj(x):
        return _compat.array_namespace(x).__name__
    raise TypeError(f"expected a NumPy array, PyTorch tensor, CuPy array or another array-API array, "
                    f"got {type(x).__name__}")


def namespace(x: Any) -> ModuleType:
    """Array-API namespace of ``x`` (``array_api_compat.<lib>`` when available)."""
    name = library_name(x)
    if _compat is not None:
        return _compat.array_namespace(x)
    if name == "numpy":
        return np
    raise ImportError(  # pragma: no cover
        f"{name} arrays need the 'array-api-compat' package: pip install 'slabopt[{name}]'"
    )


def device(x: Any) -> Any:
    """Device of ``x`` in its own library's terms (``"cpu"`` for NumPy)."""
    if library_name(x) == "numpy":
        return "cpu"
    return _compat.device(x) if _compat is not None else x.device


def dtype_name(x: Any) -> str:
    """Portable dtype name, e.g. ``"float32"``, ``"bfloat16"``, ``"int64"``, ``"complex64"``."""
    return str(x.dtype).rsplit(".", 1)[-1]


def to_numpy(x: Any) -> np.ndarray:
    """Copy-free where possible conversion to a NumPy array (host memory); other array-API
    libraries through DLPack, ``numpy.from_dlpack(x, device="cpu")`` (a host copy if needed)."""
    name = library_name(x)
    if name == "numpy":
        return x
    if name == "torch":
        x = x.detach()
        if dtype_name(x) == "bfloat16":
            x = x.float()
        return x.cpu().numpy()
    if name == "cupy":
        return x.get()  # CuPy-specific: the device-to-host copy
    return np.from_dlpack(x, device="cpu")


def from_numpy(a: np.ndarray, like: Any) -> Any:
    """Put the NumPy array ``a`` into the library and onto the device of ``like``
    (``xp.asarray(a, device=device(like))`` outside NumPy and PyTorch)."""
    name = library_name(like)
    if name == "numpy":
        return a
    if name == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).to(like.device)
    return namespace(like).asarray(a, device=device(like))


def convert_like(x: Any, like: Any) -> Any:
    """Return ``x`` in the library and on the device of ``like`` (no copy when already there)."""
    if library_name(x) == library_name(like) and str(device(x)) == str(device(like)):
        return x
    return from_numpy(to_numpy(x), like)


def compute_dtype(xp: ModuleType, x: Any) -> Any:
    """float64 for float64 inputs, float32 for float32 and the 16-bit types."""
    return xp.float64 if dtype_name(x) == "float64" else xp.float32


def round_to_precision(x: Any, name: str) -> Any:
    """``x`` rounded to the float dtype ``name`` ("float16", "float32") and back to x's dtype.

    Namespaces without that dtype (the array API standard has no float16) round on the host,
    through NumPy: meant for small arrays such as per-row scales.
    """
    xp = namespace(x)
    if hasattr(xp, name):
        return xp.astype(xp.astype(x, getattr(xp, name)), x.dtype)
    host = to_numpy(x)
    return from_numpy(host.astype(name).astype(host.dtype), x)


def to_float(value: Any) -> float:
    """Python float of a 0-d array on any backend (synchronises a GPU)."""
    return float(value)


def to_floats(values: Any) -> list[float]:
    """Python floats of the 1-d array ``values`` on any backend, by one device-to-host copy: one
    GPU synchronisation for all of them where a :func:`to_float` each would cost one apiece."""
    if library_name(values) == "torch":
        return values.detach().tolist()
    return [float(v) for v in to_numpy(values).tolist()]


def random_normal(shape: tuple[int, ...], seed: int, like: Any, dtype: Any) -> Any:
    """Standard normal matrix, identical on every backend for the same seed.

    Drawn on the host with NumPy's PCG64 and moved to ``like``'s device: the sketch matrices are
    small (n x (r + p)), and a single generator makes NumPy, PyTorch and CuPy results agree.
    """
    xp = namespace(like)
    host = np.random.default_rng(seed).standard_normal(shape)
    return xp.astype(from_numpy(host, like), dtype)


def _partitioning(name: str) -> ModuleType | None:
    """The module whose ``argpartition`` / ``partition`` select in place of a sort: NumPy, or CuPy
    (CuPy-specific); ``None`` for libraries without them (torch has ``topk``, the rest sort)."""
    if name == "numpy":
        return np
    if name == "cupy":
        import cupy

        return cupy
    return None


def topk_indices(scores: Any, k: int) -> Any:
    """Indices of the ``k`` largest entries along the last axis, in no particular order.

    A partial selection (``argpartition`` / ``torch.topk``), never a full sort of the rows, where
    the library has one; otherwise the standard ``argsort(scores, descending=True)[..., :k]``.
    """
    name = library_name(scores)
    xp = namespace(scores)
    n = scores.shape[-1]
    if k >= n:
        idx = xp.arange(n, device=device(scores))
        return xp.broadcast_to(idx, scores.shape)
    if name == "torch":
        return scores.topk(k, dim=-1, largest=True, sorted=False).indices
    lib = _partitioning(name)
    if lib is None:
        return xp.argsort(scores, axis=-1, descending=True, stable=True)[..., :k]
    return lib.argpartition(scores, n - k, axis=-1)[..., n - k :]


def kth_largest(scores: Any, k: int, work: Any = None) -> Any:
    """The k-th largest entry of each row (shape (..., 1)), by partial selection
    (``torch.kthvalue``, ``partition``; the standard ``sort`` for other libraries).

    ``work`` (NumPy/CuPy, same shape and dtype as ``scores``) is a scratch buffer to select in
    place, which spares allocating (and page-faulting) a copy of ``scores`` on every call.
    """
    name = library_name(scores)
    n = scores.shape[-1]
    if name == "torch":
        return scores.kthvalue(n - k + 1, dim=-1, keepdim=True).values
    lib = _partitioning(name)
    if lib is None:
        return namespace(scores).sort(scores, axis=-1)[..., n - k : n - k + 1]
    if work is None or work.shape != scores.shape or work.dtype != scores.dtype:
        return lib.partition(scores, n - k, axis=-1)[..., n - k : n - k + 1]
    work[...] = scores
    work.partition(n - k, axis=-1)
    return work[..., n - k : n - k + 1].copy()


def scatter(xp: ModuleType, size: int, idx: Any, values: Any, fill: Any) -> Any:
    """The 1-D array ``out`` of ``size`` entries with out[idx] = values and ``fill`` elsewhere
    (``idx`` 1-D, unique; ``values`` an array of idx's length; ``fill`` a Python scalar).

    Integer-index assignment where the library has it (``FANCY_SETITEM``); otherwise gathered
    with standard functions: with idx sorted, p_j = searchsorted(idx, j) and
    out_j = values[p_j] where idx[p_j] = j, else ``fill``.
    """
    dev = device(values)
    if library_name(values) in FANCY_SETITEM:
        out = xp.full(size, fill, dtype=values.dtype, device=dev)
        out[idx] = values
        return out
    if idx.shape[0] == 0:
        return xp.full(size, fill, dtype=values.dtype, device=dev)
    order = xp.argsort(idx)
    idx, values = xp.take(idx, order), xp.take(values, order)
    j = xp.arange(size, dtype=idx.dtype, device=dev)
    p = xp.clip(xp.searchsorted(idx, j), max=idx.shape[0] - 1)
    fill = xp.asarray(fill, dtype=values.dtype, device=dev)
    return xp.where(xp.take(idx, p) == j, xp.take(values, p), fill)


def put_rows(xp: ModuleType, x: Any, rows: Any, values: Any) -> Any:
    """``x`` with x[rows[i], :] = values[i, :] (``rows`` 1-D, unique): in place where the library
    assigns through index arrays, else a new array gathered by the standard functions:
    slot = scatter(rows → 0, 1, …; −1 elsewhere), x_i ← values[slot_i] where slot_i ≥ 0."""
    if library_name(x) in FANCY_SETITEM:
        x[rows, :] = values
        return x
    if rows.shape[0] == 0:
        return x
    order = xp.arange(rows.shape[0], dtype=rows.dtype, device=device(x))
    slot = scatter(xp, x.shape[0], rows, order, -1)
    picked = xp.take(values, xp.clip(slot, min=0), axis=0)
    return xp.where(xp.reshape(slot >= 0, (-1, 1)), picked, x)


def mask_from_indices(xp: ModuleType, shape: tuple[int, ...], idx: Any) -> Any:
    """Boolean array of ``shape`` that is True at ``idx`` (indices along the last axis).

    ``shape[:-1] == idx.shape[:-1]``; built by one flat :func:`scatter` at i·n + idx_i, no loop
    over rows.
    """
    rows = 1
    for s in shape[:-1]:
        rows *= s
    n = shape[-1]
    dev = device(idx)
    k = idx.shape[-1]
    flat_idx = xp.reshape(idx, (rows, k)) + xp.reshape(
        xp.arange(rows, device=dev, dtype=idx.dtype) * n, (rows, 1)
    )
    true = xp.ones(rows * k, dtype=xp.bool, device=dev)
    flat = scatter(xp, rows * n, xp.reshape(flat_idx, (-1,)), true, False)
    return xp.reshape(flat, shape)


BLOCK_ENTRIES = 1 << 20  # entries of a matrix per row block of :func:`row_blocks` (4 MiB in float32)


def row_blocks(m: int, n: int, entries: int | None = None) -> list[slice]:
    """Row slices that cover rows 0..m−1 in order, each of at least one row and about ``entries``
    (default ``BLOCK_ENTRIES``) entries of an m×n matrix (work done block by block keeps its
    temporaries in cache)."""
    step = max(1, (BLOCK_ENTRIES if entries is None else entries) // max(n, 1))
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]
