"""The fused CPU forward of SLaBLinear against the dense forward of its reconstruction.

Every path (fused kernel, blocked rebuild, torch reference) must give x Ŵᵀ + bias with
Ŵ = ``reconstruct()``: |y − y_ref| ≤ 1e-5 · (|x| Aᵀ + |bias|) entrywise, y_ref computed in
float64, A = |S| + |U||V|ᵀ + |c|·1ᵀ ≥ |Ŵ| (the size of what the float32 sums add up: a path may
combine the parts in any order, so a weight that cancels between S and L is no smaller for it). The
reference-path tests run without numba; the kernel tests skip when numba is absent.
"""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from slabopt.llm import fused  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

import slabopt  # noqa: E402

from ._llm import check_forward as _check  # noqa: E402


def _need_numba():
    pytest.importorskip("numba")


def _solved(m: int, n: int, rank: int, method: str = "alternating", pattern: str = "row",
            bias: bool = False, store=torch.float16, seed: int = 0) -> SLaBLinear:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g)
    X = torch.randn(4 * n, n, generator=g)
    ratio = None if ":" in pattern else 0.5
    res = slabopt.solve(W, X, ratio=ratio, rank=rank, method=method, pattern=pattern, max_iter=3)
    b = torch.randn(m, generator=g) if bias else None
    return SLaBLinear.from_result(res, bias=b, store_dtype=store)


def _random_layer(m: int, n: int, rank: int, *, density: float, signs: bool, offset: bool, bias: bool,
                  store, seed: int) -> SLaBLinear:
    """A layer with random packed parts (any mask, padding bits clear), built without a solver."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(m, n, generator=g) < density
    nnz = int(keep.sum())
    mod = SLaBLinear(n, m, nnz=nnz, rank=rank, has_signs=signs and rank > 0, has_offset=offset,
                     bias=bias, store_dtype=store)
    if nnz:
        mod.mask.copy_(slabopt.pack_signs(keep))
        mod.values.copy_(torch.randn(nnz, generator=g).to(store))
    if rank:
        mod.U.copy_(torch.randn(m, rank, generator=g).to(store))
        mod.V.copy_(torch.randn(n, rank, generator=g).to(store))
    if mod.signs is not None:
        mod.signs.copy_(slabopt.pack_signs(torch.rand(m, n, generator=g) < 0.5))
    for t in (mod.row_offset, mod.bias):
        if t is not None:
            t.copy_(torch.randn(m, generator=g).to(store))
    mod.rebuild_index()
    return mod


# ------------------------------------------------------------------- the torch reference, always
@pytest.mark.parametrize("rows", [1, 3, 64, 65])
@pytest.mark.parametrize("method", ["alternating", "slab_offset", "oats", "wanda", "svd"])
def test_reference_forward_equals_dense_reconstruction(method, rows):
    mod = _solved(24, 37, 2, method, bias=True)
    x = torch.randn(rows, 37)
    with torch.no_grad():
        _check(mod, mod.reference_forward(x), x)


def test_forward_falls_back_to_the_reference_without_numba(monkeypatch):
    mod = _solved(20, 45, 1, bias=True)
    monkeypatch.setattr(fused, "HAVE_NUMBA", False)
    mod._drop_derived()
    x = torch.randn(2, 3, 45)
    assert not mod.fused_applies(x.reshape(-1, 45))
    with torch.no_grad():
        _check(mod, mod(x), x)


def test_reference_forward_keeps_no_csr_index():
    mod = _solved(40, 64, 1)
    with torch.no_grad():
        mod.reference_forward(torch.randn(2, 64))
    assert not any(isinstance(v, tuple | torch.Tensor) and v is not None and k.startswith("_csr")
                   for k, v in vars(mod).items())
    _assert_nothing_large_held(mod)


# ------------------------------------------------------------------- the numba kernels
@pytest.mark.parametrize("store", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rank", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("m", "n"), [(17, 24), (33, 77), (64, 128), (40, 200)])
def test_fused_forward_equals_dense_reconstruction(m, n, rank, store):
    _need_numba()
    method = "wanda" if rank == 0 else "alternating"
    mod = _solved(m, n, rank, method, bias=True, store=store, seed=m + n + rank)
    assert mod.fused_supported()
    for rows in (1, 2, 4, 5, 64):
        x = torch.randn(rows, n)
        with torch.no_grad():
            _check(mod, mod.fused_forward(x), x)
            _check(mod, mod.blocked_forward(x), x)
            _check(mod, mod(x), x)


@pytest.mark.parametrize("method", ["slab_offset", "oats", "svd", "slab_init", "admm"])
@pytest.mark.parametrize("n", [37, 64, 131])
def test_fused_forward_of_every_layout(method, n):
    """Row offsets, L without signs, L only (no sparse part, rank 7), odd n."""
    _need_numba()
    mod = _solved(29, n, 2, method, bias=n % 2 == 1)
    assert mod.fused_supported()
    for rows in (1, 3, 16):
        x = torch.randn(rows, n)
        with torch.no_grad():
            _check(mod, mod.fused_forward(x), x)
            _check(mod, mod.blocked_forward(x), x)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
@pytest.mark.parametrize(("m", "n", "rank"), [(16, 40, 2), (24, 136, 1), (9, 64, 0)])
def test_nm_layers_are_fused(pattern, m, n, rank):
    """N:M combination codes are decoded once into the kernel's bitmask."""
    _need_numba()
    mod = _solved(m, n, rank, pattern=pattern, seed=n)
    assert hasattr(mod, "nm_codes") and mod.fused_supported()
    assert mod._packed_parts() is not None
    for rows in (1, 3, 64):
        x = torch.randn(rows, n)
        with torch.no_grad():
            _check(mod, mod.fused_forward(x), x)
            _check(mod, mod.blocked_forward(x), x)
            _check(mod, mod(x), x)


@pytest.mark.parametrize(("method", "pattern"), [("two_level", "row")])
def test_unsupported_layouts_take_the_reference(method, pattern):
    """Two-level codes are computed by the torch reference, with the same result."""
    mod = _solved(16, 40, 2, method, pattern=pattern)
    assert not mod.fused_supported()
    x = torch.randn(3, 40)
    assert not mod.fused_applies(x)
    with torch.no_grad():
        _check(mod, mod(x), x)


@given(m=st.integers(1, 70), n=st.integers(1, 150), rank=st.integers(0, 4),
       density=st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]), signs=st.booleans(), offset=st.booleans(),
       bias=st.booleans(), rows=st.integers(1, 9),
       store=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]), seed=st.integers(0, 2**16))
def test_fused_forward_property(m, n, rank, density, signs, offset, bias, rows, store, seed):
    pytest.importorskip("numba")
    mod = _random_layer(m, n, rank, density=density, signs=signs, offset=offset, bias=bias, store=store,
                        seed=seed)
    x = torch.randn(rows, n, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        _check(mod, mod.fused_forward(x), x)
        _check(mod, mod.blocked_forward(x), x)
        _check(mod, mod.reference_forward(x), x)


def test_set_mask_padding_bits_take_the_reference():
    """A mask whose padding bits (beyond column n) are set would shift the values: not fused."""
    _need_numba()
    mod = _random_layer(6, 13, 1, density=0.5, signs=True, offset=False, bias=False,
                        store=torch.float16, seed=3)
    mod.mask[:, -1] |= 1
    mod._drop_derived()
    x = torch.randn(1, 13)
    assert not mod.fused_applies(x)
    with torch.no_grad():
        _check(mod, mod(x), x)


def test_parallel_kernels_equal_serial(monkeypatch):
    _need_numba()
    mod = _solved(520, 512, 2, bias=True)
    x1, x8 = torch.randn(1, 512), torch.randn(8, 512)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            y1, y8 = mod(x1), mod(x8)
    finally:
        torch.set_num_threads(before)
    _check(mod, y1, x1)
    _check(mod, y8, x8)


def test_every_cached_kernel_has_its_own_cache_file():
    """numba keys its on-disk cache by module, qualified name and line, not by ``parallel=True``:
    serial and parallel variants of one Python function shared one entry, so the parallel forward
    loaded the serial machine code and two threads ran as one. Each cached kernel needs its file."""
    _need_numba()
    from numba.core.registry import CPUDispatcher

    from slabopt.solvers import _alternating_kernels as _kernels

    files = {}
    for module in (fused, _kernels):
        for name, obj in vars(module).items():
            cache_file = getattr(getattr(obj, "_cache", None), "_cache_file", None)
            if isinstance(obj, CPUDispatcher) and cache_file is not None:
                files[f"{module.__name__}.{name}"] = cache_file._index_name
    assert {"slabopt.llm.fused._kernel_parallel", "slabopt.llm.fused._decode_parallel"} <= set(files)
    assert len(set(files.values())) == len(files), files


def test_gradients_take_the_reference():
    mod = _solved(12, 24, 1)
    x = torch.randn(2, 24, requires_grad=True)
    assert not mod.fused_applies(x)
    mod(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


# ------------------------------------------------------------------- memory held between calls
def _held_arrays(mod: SLaBLinear):
    """Every tensor and numpy array the module holds (its buffers and derived attributes)."""
    import numpy as np

    seen = list(mod.buffers())
    for obj in (mod, mod._packed):
        for v in vars(obj).values() if obj else ():
            if isinstance(v, torch.Tensor | np.ndarray):
                seen.append(v)
            elif isinstance(v, tuple | list):
                seen.extend(t for t in v if isinstance(t, torch.Tensor | np.ndarray))
    return seen


def _assert_nothing_large_held(mod: SLaBLinear) -> None:
    """No array of m·n elements or more, and no int64 array of nnz elements (a column index)."""
    mn = mod.out_features * mod.in_features
    held = _held_arrays(mod)
    assert held
    for a in held:
        size = a.numel() if isinstance(a, torch.Tensor) else a.size
        assert size < mn, (type(a), a.shape)
        if str(a.dtype).endswith("int64"):
            assert size <= mod.out_features + 1, a.shape


@pytest.mark.parametrize("rows", [1, 4, 100])
def test_forward_holds_no_dense_weight_or_index(rows):
    _need_numba()
    mod = _solved(96, 80, 2, bias=True)
    assert mod.nnz > mod.out_features + 1
    with torch.no_grad():
        mod(torch.randn(rows, 80))
    assert mod._packed
    assert mod._W is None
    _assert_nothing_large_held(mod)


# ------------------------------------------------------------------- loaded models
def test_loaded_compressed_model_uses_the_fused_forward(tmp_path):
    _need_numba()
    from slabopt.llm.arch import block_linears, decoder_layers
    from slabopt.llm.loading import load_compressed
    from slabopt.llm.pipeline import compress_model

    from ._llm import tiny_model, windows

    model = tiny_model()
    compress_model(model, windows(), tmp_path / "out", method="slab", ratio=0.5, rank=1, max_iter=3,
                   progress=False, log=None)
    loaded, _ = load_compressed(tmp_path / "out")
    layers = [mod for block in decoder_layers(loaded) for mod in block_linears(block).values()]
    assert layers and all(isinstance(mod, SLaBLinear) for mod in layers)
    for mod in layers:
        x = torch.randn(1, mod.in_features)
        assert not mod.cache_weight and mod.fused_applies(x)
        with torch.no_grad():
            _check(mod, mod(x), x)
    ids = windows(seed=5)[:1, :6]
    with torch.no_grad():
        out = loaded.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 9)
    for mod in layers:
        _assert_nothing_large_held(mod)
