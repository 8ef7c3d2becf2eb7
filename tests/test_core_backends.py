"""NumPy, PyTorch (CPU, CUDA) and CuPy give the same results in the caller's array type."""

import numpy as np
import pytest

import slabopt

torch = pytest.importorskip("torch")

rng = np.random.default_rng(0)
W = rng.standard_t(3, size=(48, 64))
X = rng.standard_normal((100, 64)) * 10 ** rng.uniform(0, 2, 64)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("svd", ["exact", "randomized"])
def test_numpy_and_torch_agree_float64(svd):
    a = slabopt.solve(W, X, ratio=0.5, rank=4, svd=svd)
    b = slabopt.solve(torch.from_numpy(W), torch.from_numpy(X), ratio=0.5, rank=4, svd=svd)
    assert isinstance(b.U, torch.Tensor) and isinstance(b.sparse.values, torch.Tensor)
    assert b.reconstruct().dtype == torch.float64
    assert rel(b.reconstruct().numpy(), a.reconstruct()) < 1e-5
    assert np.allclose(a.history, b.history, rtol=1e-5)
    assert np.array_equal(b.signs_packed.numpy(), a.signs_packed)
    assert b.bits == a.bits


def test_seed_determinism():
    a = slabopt.solve(W, X, rank=3, svd="randomized", seed=7)
    b = slabopt.solve(W, X, rank=3, svd="randomized", seed=7)
    assert np.array_equal(a.reconstruct(), b.reconstruct()) and a.history == b.history


@pytest.mark.parametrize(
    ("dtype", "compute"),
    [("float16", "float32"), ("bfloat16", "float32"), ("float32", "float32"), ("float64", "float64")],
)
def test_torch_dtypes(dtype, compute):
    Wt = torch.from_numpy(W).to(getattr(torch, dtype))
    res = slabopt.solve(Wt, torch.from_numpy(X).to(getattr(torch, dtype)), rank=2)
    assert str(res.U.dtype) == f"torch.{compute}"
    assert res.reconstruct().dtype == Wt.dtype
    assert np.isfinite(res.objective)


def test_numpy_float16_computes_in_float32():
    res = slabopt.solve(W.astype(np.float16), X.astype(np.float16), rank=2)
    assert res.U.dtype == np.float32 and res.reconstruct().dtype == np.float16


def test_mixed_libraries_convert_x_to_w():
    res = slabopt.solve(torch.from_numpy(W), X, rank=2)  # NumPy X for a torch W
    assert isinstance(res.U, torch.Tensor)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    a = slabopt.solve(torch.from_numpy(W), torch.from_numpy(X), rank=4, svd="exact")
    b = slabopt.solve(torch.from_numpy(W).cuda(), torch.from_numpy(X).cuda(), rank=4, svd="exact")
    assert b.U.is_cuda and b.reconstruct().is_cuda and b.signs_packed.is_cuda
    assert rel(b.reconstruct().cpu().numpy(), a.reconstruct().numpy()) < 1e-5


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        pytest.skip("no CUDA device for CuPy")
    a = slabopt.solve(W, X, rank=4, svd="exact")
    b = slabopt.solve(cupy.asarray(W), cupy.asarray(X), rank=4, svd="exact")
    assert isinstance(b.U, cupy.ndarray)
    assert rel(cupy.asnumpy(b.reconstruct()), a.reconstruct()) < 1e-5


def _tensors(res):
    parts = [res.U, res.V, res.levels, res.row_offset, res.sparse.values, res.reconstruct()]
    return [t for t in parts if t is not None]


@pytest.mark.parametrize("method", ["alternating", "slab_offset", "two_level", "rpca", "admm"])
def test_inputs_that_require_grad_are_detached(method):
    gen = torch.Generator().manual_seed(0)
    W = torch.nn.Parameter(torch.randn(8, 12, dtype=torch.float64, generator=gen))
    X = torch.randn(30, 12, dtype=torch.float64, generator=gen, requires_grad=True)
    res = slabopt.solve(W, X, rank=1, ratio=0.4, method=method, max_iter=3)
    assert [t.requires_grad for t in _tensors(res)] == [False] * len(_tensors(res))
    assert W.grad is None and W.requires_grad  # the caller's tensor is left as it was


def test_objective_of_tensors_that_require_grad(monkeypatch):
    from slabopt import _backend

    plain = _backend.to_float

    def to_float(value):
        assert not value.requires_grad, "objective() evaluated a tensor inside an autograd graph"
        return plain(value)

    monkeypatch.setattr(_backend, "to_float", to_float)
    W = torch.nn.Parameter(torch.randn(8, 12, dtype=torch.float64))
    X = torch.randn(30, 12, dtype=torch.float64, requires_grad=True)
    objs = slabopt.objective(W, W * 0.5, X)
    E = 0.5 * W.detach()
    assert objs.diagonal == pytest.approx(float(((E * X.detach().norm(dim=0)) ** 2).sum()), rel=1e-12)
    G = X.detach().T @ X.detach()
    H = G + 0.01 * G.diagonal().mean() * torch.eye(12, dtype=torch.float64)
    assert objs.full == pytest.approx(float(((E @ H) * E).sum()), rel=1e-12)

