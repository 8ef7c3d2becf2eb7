"""Torch function modes that watch the torch code of ``slabopt/`` and ``llm/`` run on the CPU.

:class:`FactoryRecorder` records each call of a tensor factory (``torch.zeros``, ``torch.tensor``, …)
that makes a non-scalar tensor without naming its device: on a GPU run such a tensor lands on the
CPU and meets CUDA tensors (0-dim tensors are let through: CUDA kernels accept 0-dim CPU scalars).
:class:`SyncCounter` counts the calls that bring a tensor's value to the host (``.item()``,
``float(t)``, ``bool(t)``, ``.cpu()``, …), each a host–device synchronisation on a GPU.

Only calls made from a frame in the watched source folders count (``array_api_compat``'s wrappers
are looked through, so ``xp.zeros(...)`` in a solver counts as the solver's call); calls that torch,
transformers or the tests make on their own are left alone.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parent.parent
WATCHED = (ROOT / "slabopt", ROOT / "llm")


def _folder_of(module) -> str:
    """The folder of a module's file, as the frames' file names spell it."""
    return str(Path(module.__file__).resolve().parent)


try:
    import array_api_compat
    _THROUGH = (_folder_of(array_api_compat),)
except ImportError:  # pragma: no cover - the torch tests run with array-api-compat installed
    _THROUGH = ()
# torch's own Python layers between a Tensor method and the mode (Tensor.__array__ and the like)
_THROUGH += (str(Path(torch.__file__).resolve().parent / "overrides.py"),
             str(Path(torch.__file__).resolve().parent / "_tensor.py"), str(Path(__file__).resolve()))

FACTORIES = frozenset({
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor, torch.as_tensor,
    torch.asarray, torch.rand, torch.randn, torch.randint, torch.randperm, torch.eye, torch.linspace,
    torch.logspace, torch.empty_strided, torch.tril_indices, torch.triu_indices,
})
# factories whose first argument may be data: a tensor there carries its own device
_FROM_DATA = frozenset({torch.tensor, torch.as_tensor, torch.asarray})

SYNCS = frozenset({
    torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.__float__,
    torch.Tensor.__int__, torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.__array__,
    torch.equal, torch.allclose, torch.is_nonzero,
})


def call_site(roots=WATCHED) -> str | None:
    """``"path:line"`` (relative to the repository) of the frame that called into torch, looking
    through ``array_api_compat`` and torch's own Python layers; None unless it lies under ``roots``."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_THROUGH):
        frame = frame.f_back
    if frame is None:
        return None
    path = Path(frame.f_code.co_filename)
    if not any(path.is_relative_to(root) for root in roots):
        return None
    shown = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    return f"{shown}:{frame.f_lineno}"


def _names_no_device(func, args, kwargs) -> bool:
    """The call gives no device (``device=None`` counts as none), and, for a factory from data, the
    data is not a tensor that brings its own."""
    if kwargs.get("device") is not None:
        return False
    return not (func in _FROM_DATA and args and isinstance(args[0], torch.Tensor))


class FactoryRecorder(TorchFunctionMode):
    """Records ``(site, factory name)`` in :attr:`found` for each factory call from the watched
    folders that makes a tensor of one dimension or more without naming its device."""

    def __init__(self, roots=WATCHED):
        super().__init__()
        self.roots = tuple(roots)
        self.found: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in FACTORIES and isinstance(out, torch.Tensor) and out.ndim > 0 \
                and _names_no_device(func, args, kwargs):
            site = call_site(self.roots)
            if site is not None:
                self.found.append((site, func.__name__))
        return out


class SyncCounter(TorchFunctionMode):
    """Counts, per call site in the watched folders, the calls that read a tensor's value on the
    host (:data:`SYNCS`); :attr:`total` is their number."""

    def __init__(self, roots=WATCHED):
        super().__init__()
        self.roots = tuple(roots)
        self.sites: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCS:
            site = call_site(self.roots)
            if site is not None:
                self.sites[site] += 1
        return func(*args, **(kwargs or {}))
