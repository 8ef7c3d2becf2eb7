"""Give memory freed between layers back to the operating system (glibc only; a no-op elsewhere).

A solve of one large layer allocates and frees buffers of tens to hundreds of MiB. glibc serves
requests above its mmap threshold with their own mappings, which go back to the system on free,
but it raises that threshold (up to 32 MiB) after the first large free, so later buffers below it
come from the heap arenas and stay there after they are freed. Over a model the resident memory
then creeps up by the retained heap (measured in ``docs/benchmarks.md``, "Memory").

:func:`limit_heap_retention` sets the thresholds once (``mallopt(M_MMAP_THRESHOLD)`` and
``mallopt(M_TRIM_THRESHOLD)``, the same as the environment variables ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_``); :func:`release_freed_memory` calls ``malloc_trim(0)``, which returns
the free pages of every arena. Both are process-wide allocator settings, so the pipeline calls the
first only from its own entry point (:func:`.pipeline.compress_checkpoint`, what ``slabopt
compress`` runs), and the second, which changes no setting, after every solved layer.

:func:`page_out` is for memory that is not the heap's: it advises the kernel (``madvise``
``MADV_PAGEOUT``, Linux ≥ 5.4) to reclaim the pages of a tensor that lives on a file mapping and
will rarely be read again; clean file pages leave the resident set and are read from the file when
touched, anonymous pages are swapped out or left alone, never lost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
from typing import Any

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 20  # bytes: 1 MiB
MADV_PAGEOUT = 21  # Linux <sys/mman.h>, since 5.4


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``malloc_trim`` and ``mallopt``), else ``None``."""
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name)
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.madvise.restype = ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return lib


def release_freed_memory() -> bool:
    """``malloc_trim(0)``: return the free pages of all heap arenas. True when memory was released."""
    lib = _libc()
    return bool(lib is not None and lib.malloc_trim(0))


def limit_heap_retention(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Serve allocations ≥ ``threshold`` bytes by their own mappings and trim heap tops above it.

    Returns True when glibc accepted both settings. Fixing the mmap threshold also switches off
    glibc's dynamic raising of it.
    """
    lib = _libc()
    if lib is None:
        return False
    return bool(lib.mallopt(M_MMAP_THRESHOLD, threshold)) and bool(lib.mallopt(M_TRIM_THRESHOLD, threshold))


def page_out(tensor: Any) -> bool:
    """Advise the kernel to reclaim the whole pages inside ``tensor``'s memory (a CPU torch tensor),
    ``madvise(MADV_PAGEOUT)``. True when the kernel accepted; False without glibc, on kernels
    without the advice, or when no whole page lies inside. The data stay valid either way."""
    lib = _libc()
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    hi = end // mmap.PAGESIZE * mmap.PAGESIZE
    return lib is not None and hi > lo and lib.madvise(lo, hi - lo, MADV_PAGEOUT) == 0
