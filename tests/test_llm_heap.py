"""The pipeline gives freed solver buffers back to the system (glibc)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from slabopt.llm import heap

pytestmark = pytest.mark.skipif(heap._libc() is None, reason="needs glibc's malloc_trim/mallopt")

REPO = Path(__file__).resolve().parents[1]

# 40 heap chunks of 8 MiB, each followed by a live 256 KiB chunk so that freed ones cannot merge
# into the heap top; glibc then keeps them resident after free() unless trimmed.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from slabopt.llm import heap
    lib = heap._libc()
    lib.malloc.restype, lib.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    lib.free.argtypes = [ctypes.c_void_p]
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
    mode, big, n = sys.argv[1], 8 << 20, 40
    if mode == "limit":
        assert heap.limit_heap_retention()
    p = lib.malloc(2 * big); ctypes.memset(p, 1, 2 * big); lib.free(p)  # glibc raises its mmap threshold
    chunks = []
    for _ in range(n):
        q = lib.malloc(big); ctypes.memset(q, 1, big); chunks.append(q)
        lib.malloc(256 << 10)
    before = rss()
    for q in chunks:
        lib.free(q)
    if mode == "trim":
        heap.release_freed_memory()
    print((before - rss()) / (n * big))
""")


def released_fraction(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         cwd=REPO)
    return float(out.stdout)


def test_glibc_keeps_freed_heap_chunks_without_help():
    assert released_fraction("none") < 0.2  # the retention the pipeline works around


@pytest.mark.parametrize("mode", ["trim", "limit"])
def test_trim_and_thresholds_return_freed_memory(mode):
    assert released_fraction(mode) > 0.9


def test_pipeline_trims_after_every_layer(monkeypatch, tmp_path):
    from slabopt.llm import pipeline

    from tests._llm import tiny_model, windows

    calls = []
    monkeypatch.setattr(pipeline, "release_freed_memory", lambda: calls.append(1))
    model = tiny_model()
    pipeline.compress_model(model, windows(), tmp_path / "out", ratio=0.5, rank=1, max_iter=2,
                            progress=False, log=None)
    n_linear = 7 * len(pipeline.decoder_layers(model))
    assert len(calls) == n_linear + len(pipeline.decoder_layers(model))


def _rss_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * 4096


def test_page_out_drops_file_pages_and_keeps_their_data(tmp_path):
    """A tensor on a file mapping: after ``page_out`` its pages leave the resident set and read back
    unchanged from the file."""
    import mmap

    import numpy as np
    import torch

    size = 32 << 20
    path = tmp_path / "blob"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    with open(path, "rb") as fh:
        view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    t = torch.frombuffer(view, dtype=torch.uint8)
    total = int(t.sum(dtype=torch.int64))  # every page read: resident
    before = _rss_bytes()
    if not heap.page_out(t):
        pytest.skip("the kernel refused MADV_PAGEOUT (Linux < 5.4?)")
    assert before - _rss_bytes() > 0.5 * size
    assert int(t.sum(dtype=torch.int64)) == total


def test_page_out_keeps_anonymous_memory_and_refuses_nothing_else():
    import torch

    t = torch.randn(1 << 20)
    want = t.clone()
    heap.page_out(t)
    assert torch.equal(t, want)
    assert heap.page_out(torch.zeros(10)) is False  # no whole page inside: nothing advised
