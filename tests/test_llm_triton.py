"""The Triton forward of SLaBLinear (llm/triton_forward.py) against the dense forward of the layer's
reconstruction: in Triton's CPU interpreter where no CUDA device is present, compiled on the GPU
where one is.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` wraps a function: for triton's own jit'd
helpers (``tl.zeros``, ``tl.cumsum``, ...) when triton is first imported. So without CUDA this
module sets it before importing triton (nothing imports triton earlier in the test run: SLaBLinear
imports the kernel module only for CUDA inputs), and it stays set for the session (harmless
without a GPU: nothing else can run triton there).
The bound is tests/test_llm_fused.py's: |y − y_ref| ≤ 1e-5 · (|x| Aᵀ + |bias|), y_ref in float64,
A = |S| + |U||V|ᵀ + |c|·1ᵀ (``check_forward``).
"""

from __future__ import annotations

import copy
import importlib
import os

import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from slabopt.llm import nm_codes  # noqa: E402
from slabopt.llm.bitpack import pack_uint  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

import slabopt  # noqa: E402
from slabopt.positions import rice_encode  # noqa: E402

from ._llm import check_forward  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
STORES = [torch.float16, torch.bfloat16, torch.float32]
CODE_BITS = [None, 2, 3, 4, 5, 6, 7, 8]  # None: values in the store dtype; q: q-bit codes, row scales


def _interpreted(fn) -> bool:
    return type(fn).__name__ == "InterpretedFunction"


@pytest.fixture(scope="module")
def tfw():
    """``slabopt.llm.triton_forward``, its kernels interpreted on the CPU where there is no CUDA."""
    module = importlib.import_module("slabopt.llm.triton_forward")
    assert module.HAVE_TRITON
    if not CUDA:
        if not _interpreted(triton.language.zeros):
            pytest.fail("triton was imported before this module could set TRITON_INTERPRET=1: run "
                        "TRITON_INTERPRET=1 python -m pytest tests/test_llm_triton.py")
        if not _interpreted(module._slab_kernel):
            module = importlib.reload(module)
    return module


def _pattern(m: int, n: int, positions: str, density: float, equal_rows: bool, nm: tuple[int, int],
             g: torch.Generator) -> torch.Tensor:
    """A random m×n pattern: N of every M columns (``nm``), the same count per row (Rice codes,
    coded values), or independent entries of probability ``density``."""
    if positions == "nm":
        N, M = nm
        pick = torch.rand(m, n // M, M, generator=g).argsort(-1)[..., :N]
        return torch.zeros(m, n // M, M, dtype=torch.bool).scatter_(-1, pick, True).reshape(m, n)
    if equal_rows or positions == "rice":
        pick = torch.rand(m, n, generator=g).argsort(1)[:, : round(density * n)]
        return torch.zeros(m, n, dtype=torch.bool).scatter_(1, pick, True)
    return torch.rand(m, n, generator=g) < density


def _layer(m: int, n: int, rank: int, *, positions: str = "bitmask", store=torch.float16,
           q: int | None = None, density: float = 0.5, signs: bool = True, offset: bool = False,
           bias: bool = False,
           l_group: int | None = None, nm: tuple[int, int] = (2, 4), seed: int = 0) -> SLaBLinear:
    """A layer with random parts in a saved format: positions as a bitmask, N:M codes or Rice codes;
    values in ``store`` or as q-bit codes with row scales; L per group of ``l_group`` columns."""
    g = torch.Generator().manual_seed(seed)
    keep = _pattern(m, n, positions, density, q is not None, nm, g)
    nnz = int(keep.sum())
    rice = None
    if positions == "rice" and nnz:
        counts = keep.sum(1)
        indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).numpy()
        rice = rice_encode(indptr, keep.nonzero()[:, 1].numpy(), n)[0]
    mod = SLaBLinear(n, m, nnz=nnz, rank=rank, has_signs=signs and rank > 0, has_offset=offset, bias=bias,
                     store_dtype=store, l_group=l_group, nm=nm if positions == "nm" else None,
                     value_codes=None if q is None else (q, nnz // m),
                     rice_bytes=None if rice is None else rice.size)
    if rice is not None:
        mod.rice.copy_(torch.from_numpy(rice))
    elif nnz and positions == "nm":
        mod.nm_codes.copy_(nm_codes.encode(keep, *nm))
    elif nnz:
        mod.mask.copy_(slabopt.pack_signs(keep))
    if q is None:
        mod.values.copy_(torch.randn(nnz, generator=g).to(store))
    else:
        mod.values.copy_(pack_uint(torch.randint(0, 2**q, (m, nnz // m), generator=g), q))
        mod.value_scales.copy_(torch.randn(m, generator=g).to(mod.value_scales.dtype))
    for t in (mod.U, mod.V, mod.row_offset, mod.bias):
        if t is not None:
            t.copy_(torch.randn(t.shape, generator=g).to(store))
    if mod.signs is not None:
        mod.signs.copy_(slabopt.pack_signs(torch.rand(m, n, generator=g) < 0.5))
    mod.rebuild_index()
    return mod


def _on_device(mod: SLaBLinear) -> SLaBLinear:
    return mod if DEVICE == "cpu" else copy.deepcopy(mod).to(DEVICE)


def _run(tfw, mod: SLaBLinear, rows: int, seed: int = 1) -> None:
    """The kernel's y for ``rows`` random inputs equals x Ŵᵀ + bias (Ŵ, y_ref on the CPU)."""
    assert tfw.supported(mod)
    x = torch.randn(rows, mod.in_features, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = tfw.slab_forward(tfw.prepare(_on_device(mod)), x.to(DEVICE))
    assert y.device.type == DEVICE and y.dtype == torch.float32
    check_forward(mod, y.cpu(), x)


# ------------------------------------------------------------------- every saved format, every rank
@pytest.mark.parametrize("q", CODE_BITS)
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("positions", ["bitmask", "nm", "rice"])
def test_every_value_and_position_format(tfw, positions, store, q):
    """Odd n (except N:M, whose n is a multiple of M), signs, row offset and bias all present."""
    n = 44 if positions == "nm" else 45
    mod = _layer(19, n, 2, positions=positions, store=store, q=q, offset=True, bias=True,
                 seed=17 * (q or 1) + STORES.index(store))
    _run(tfw, mod, rows=3)


@pytest.mark.parametrize("rank", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("rows", [1, 64])
def test_every_rank(tfw, rank, rows):
    _run(tfw, _layer(40, 71, rank, density=0.3, bias=True, seed=rank), rows=rows)


@pytest.mark.parametrize(("l_group", "rank"), [(16, 2), (32, 4), (7, 1)])
def test_factors_per_column_group(tfw, l_group, rank):
    _run(tfw, _layer(23, 70, rank, l_group=l_group, offset=True, q=4, seed=l_group), rows=5)


@pytest.mark.parametrize("layout", ["no sparse part", "no signs", "dense S", "offset only"])
def test_parts_left_out(tfw, layout):
    kw = {"no sparse part": dict(density=0.0), "no signs": dict(signs=False),
          "dense S": dict(density=1.0, rank=0), "offset only": dict(density=0.0, rank=0, offset=True)}[layout]
    _run(tfw, _layer(18, 33, **{"rank": 1, **kw}), rows=2)


def test_set_mask_padding_bits_are_ignored(tfw):
    """Bits beyond column n in a row's last mask byte are neither read nor counted (the numba kernel
    refuses such a mask; this one does not need to)."""
    mod = _layer(9, 13, 1, density=0.4, bias=True, seed=5)
    mod.mask[:, -1] |= 0b111
    mod._drop_derived()
    _run(tfw, mod, rows=3)


def test_more_rows_than_one_launch(tfw):
    """Beyond ``MAX_ROWS`` rows :func:`slab_forward` launches once per ``MAX_ROWS``."""
    _run(tfw, _layer(12, 20, 1, bias=True), rows=tfw.MAX_ROWS + 3)


@pytest.mark.parametrize("kw", [dict(method="alternating"), dict(method="slab_offset"),
                                dict(pattern="2:4"), dict(positions="rice"), dict(sparse_bits=4),
                                dict(method="slab_obs", bits=3.0, sparse_bits=3, l_group=32)],
                         ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_solved_layers(tfw, kw):
    """Layers as compression saves them (:meth:`SLaBLinear.from_result` of a solve)."""
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(24, 64, generator=g), torch.randn(128, 64, generator=g)
    budget = {} if "bits" in kw else {"ratio": None if "pattern" in kw else 0.5}
    res = slabopt.solve(W, X, rank=1, max_iter=2, **budget, **kw)
    mod = SLaBLinear.from_result(res, bias=torch.randn(24, generator=g))
    _run(tfw, mod, rows=4)


# ------------------------------------------------------------------- random shapes and layouts
@settings(max_examples=100, deadline=None)
@given(m=st.integers(1, 100), n=st.integers(1, 100), rank=st.integers(0, 4),
       positions=st.sampled_from(["bitmask", "nm", "rice"]), store=st.sampled_from(STORES),
       q=st.sampled_from(CODE_BITS), density=st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]),
       signs=st.booleans(), offset=st.booleans(), bias=st.booleans(),
       l_group=st.sampled_from([None, 8, 33]), rows=st.integers(1, 64), seed=st.integers(0, 2**16))
def test_triton_forward_property(tfw, m, n, rank, positions, store, q, density, signs, offset, bias,
                                 l_group, rows, seed):
    if positions == "nm":
        n = 4 * -(-n // 4)
    mod = _layer(m, n, rank, positions=positions, store=store, q=q, density=density, signs=signs,
                 offset=offset, bias=bias, l_group=l_group, seed=seed)
    _run(tfw, mod, rows=rows, seed=seed + 1)


# ------------------------------------------------------------------- the check catches a mistake
def test_a_flipped_sign_bit_is_caught(tfw):
    mod = _layer(16, 24, 1, seed=3)
    parts = tfw.prepare(_on_device(mod))
    parts.signs = parts.signs.clone()
    parts.signs[5, 1] ^= 0x10
    x = torch.randn(2, 24)
    y = tfw.slab_forward(parts, x.to(DEVICE)).cpu()
    with pytest.raises(AssertionError):
        check_forward(mod, y, x)


# ------------------------------------------------------------------- dispatch
def test_cpu_inputs_never_take_the_triton_kernel(tfw):
    mod = _layer(16, 24, 1, bias=True)
    x = torch.randn(2, 24)
    assert tfw.supported(mod) and not mod.triton_applies(x)
    with torch.no_grad():
        check_forward(mod, mod(x), x)
    assert mod._triton is None


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [1, 64, 65])
def test_cuda_forward_dispatch(tfw, rows):
    """On CUDA, forward takes the Triton kernel for up to ``MAX_ROWS`` rows, the other paths above."""
    mod = _layer(40, 70, 2, q=4, offset=True, bias=True)
    gpu = _on_device(mod)
    x = torch.randn(rows, 70)
    with torch.no_grad():
        y = gpu(x.to(DEVICE))
    assert gpu.triton_applies(x.to(DEVICE)) == (rows <= tfw.MAX_ROWS)
    assert (gpu._triton is not None) == (rows <= tfw.MAX_ROWS)
    check_forward(mod, y.cpu(), x)


def test_unsupported_layers(tfw):
    """Two-level codes and rank above ``MAX_RANK`` are left to the other paths."""
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(16, 40, generator=g), torch.randn(80, 40, generator=g)
    two_level = SLaBLinear.from_result(slabopt.solve(W, X, ratio=0.5, rank=1, method="two_level", max_iter=2))
    assert not tfw.supported(two_level)
    assert not tfw.supported(_layer(8, 16, tfw.MAX_RANK + 1))
