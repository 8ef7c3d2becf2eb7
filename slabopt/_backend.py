"""The one place that knows which array library an array comes from.

The solvers are written once against the Python array API standard; this module supplies the
namespace (through ``array-api-compat`` when it is installed, NumPy's own namespace otherwise -- NumPy
>= 2 implements the standard, so the core needs nothing beyond NumPy and SciPy) plus the handful of
operations the standard lacks: partial (top-k) selection, scattering a boolean mask, seeded random
normals that are identical on every backend, and moving arrays between libraries.
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


def library_name(x: Any) -> str:
    """Return ``"numpy"``, ``"torch"`` or ``"cupy"`` for an array, or raise ``TypeError``."""
    module = type(x).__module__.split(".")[0]
    if isinstance(x, np.ndarray):
        return "numpy"
    if module == "torch":
        return "torch"
    if module == "cupy":
        return "cupy"
    raise TypeError(f"expected a NumPy array, PyTorch tensor or CuPy array, got {type(x).__name__}")


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
    return x.device


def dtype_name(x: Any) -> str:
    """Portable dtype name, e.g. ``"float32"``, ``"bfloat16"``, ``"int64"``, ``"complex64"``."""
    return str(x.dtype).rsplit(".", 1)[-1]


def to_numpy(x: Any) -> np.ndarray:
    """Copy-free where possible conversion to a NumPy array (host memory)."""
    name = library_name(x)
    if name == "numpy":
        return x
    if name == "torch":
        x = x.detach()
        if dtype_name(x) == "bfloat16":
            x = x.float()
        return x.cpu().numpy()
    return x.get()  # cupy


def from_numpy(a: np.ndarray, like: Any) -> Any:
    """Put the NumPy array ``a`` into the library and onto the device of ``like``."""
    name = library_name(like)
    if name == "numpy":
        return a
    if name == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a)).to(like.device)
    import cupy

    with like.device:
        return cupy.asarray(a)


def convert_like(x: Any, like: Any) -> Any:
    """Return ``x`` in the library and on the device of ``like`` (no copy when already there)."""
    if library_name(x) == library_name(like) and str(device(x)) == str(device(like)):
        return x
    return from_numpy(to_numpy(x), like)


def compute_dtype(xp: ModuleType, x: Any) -> Any:
    """float64 for float64 inputs, float32 for float32 and the 16-bit types."""
    return xp.float64 if dtype_name(x) == "float64" else xp.float32


def to_float(value: Any) -> float:
    """Python float of a 0-d array on any backend (synchronises a GPU)."""
    return float(value)


def random_normal(shape: tuple[int, ...], seed: int, like: Any, dtype: Any) -> Any:
    """Standard normal matrix, identical on every backend for the same seed.

    Drawn on the host with NumPy's PCG64 and moved to ``like``'s device: the sketch matrices are
    small (n x (r + p)), and a single generator makes NumPy, PyTorch and CuPy results agree.
    """
    xp = namespace(like)
    host = np.random.default_rng(seed).standard_normal(shape)
    return xp.astype(from_numpy(host, like), dtype)


def topk_indices(scores: Any, k: int) -> Any:
    """Indices of the ``k`` largest entries along the last axis, in no particular order.

    A partial selection (``argpartition`` / ``torch.topk``), never a full sort of the rows.
    """
    name = library_name(scores)
    n = scores.shape[-1]
    if k >= n:
        xp = namespace(scores)
        idx = xp.arange(n, device=device(scores))
        return xp.broadcast_to(idx, scores.shape)
    if name == "torch":
        return scores.topk(k, dim=-1, largest=True, sorted=False).indices
    xp_lib = np if name == "numpy" else __import__("cupy")
    return xp_lib.argpartition(scores, n - k, axis=-1)[..., n - k :]


def kth_largest(scores: Any, k: int, work: Any = None) -> Any:
    """The k-th largest entry of each row (shape (..., 1)), by partial selection.

    ``work`` (NumPy/CuPy, same shape and dtype as ``scores``) is a scratch buffer to select in
    place, which spares allocating (and page-faulting) a copy of ``scores`` on every call.
    """
    name = library_name(scores)
    n = scores.shape[-1]
    if name == "torch":
        return scores.kthvalue(n - k + 1, dim=-1, keepdim=True).values
    if work is None or work.shape != scores.shape or work.dtype != scores.dtype:
        xp_lib = np if name == "numpy" else __import__("cupy")
        return xp_lib.partition(scores, n - k, axis=-1)[..., n - k : n - k + 1]
    work[...] = scores
    work.partition(n - k, axis=-1)
    return work[..., n - k : n - k + 1].copy()


def mask_from_indices(xp: ModuleType, shape: tuple[int, ...], idx: Any) -> Any:
    """Boolean array of ``shape`` that is True at ``idx`` (indices along the last axis).

    ``shape[:-1] == idx.shape[:-1]``; built by one flat scatter, no loop over rows.
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
    flat = xp.zeros(rows * n, dtype=xp.bool, device=dev)
    flat[xp.reshape(flat_idx, (-1,))] = True
    return xp.reshape(flat, shape)


BLOCK_ENTRIES = 1 << 20  # entries of a matrix per row block of :func:`row_blocks` (4 MiB in float32)


def row_blocks(m: int, n: int, entries: int | None = None) -> list[slice]:
    """Row slices that cover rows 0..m−1 in order, each of at least one row and about ``entries``
    (default ``BLOCK_ENTRIES``) entries of an m×n matrix (work done block by block keeps its
    temporaries in cache)."""
    step = max(1, (BLOCK_ENTRIES if entries is None else entries) // max(n, 1))
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]
