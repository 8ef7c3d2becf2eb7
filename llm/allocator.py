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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
DEFAULT_THRESHOLD = 1 << 20  # bytes: 1 MiB


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``malloc_trim`` and ``mallopt``), else ``None``."""
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name)
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
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
