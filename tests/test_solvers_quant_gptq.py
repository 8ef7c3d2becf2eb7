"""gptq against a transcription of the authors' code.

``Quantizer``/``quantize`` below transcribe ``quant.py`` and ``GPTQ.fasterquant`` transcribes
``gptq.py`` of github.com/IST-DASLab/gptq (commit 2d65066), line for line, in plain torch; the
only changes are float64 (so that the comparison is not about float32 rounding), no CUDA, no
Conv1D/Conv2d branches, no prints/DEBUG, and two added lines (marked "added") that record the
integer codes.
"""

import math

import numpy as np
import pytest

import slabopt

torch = pytest.importorskip("torch")


# ---- transcription of IST-DASLab/gptq quant.py (mse=False paths kept as they are) -----------------

def quantize(x, scale, zero, maxq):
    if maxq < 0:
        return (x > scale / 2).float() * scale + (x < zero / 2).float() * zero
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class Quantizer(torch.nn.Module):

    def __init__(self, shape=1):
        super(Quantizer, self).__init__()  # noqa: UP008 (as in quant.py)
        self.register_buffer('maxq', torch.tensor(0))
        self.register_buffer('scale', torch.zeros(shape, dtype=torch.float64))
        self.register_buffer('zero', torch.zeros(shape, dtype=torch.float64))

    def configure(self, bits, perchannel=False, sym=True, mse=False, norm=2.4, grid=100, maxshrink=.8,
                  trits=False):
        self.maxq = torch.tensor(2 ** bits - 1)
        self.perchannel = perchannel
        self.sym = sym
        self.mse = mse
        self.norm = norm
        self.grid = grid
        self.maxshrink = maxshrink
        if trits:
            self.maxq = torch.tensor(-1)

    def find_params(self, x, weight=False):
        dev = x.device
        self.maxq = self.maxq.to(dev)

        shape = x.shape
        if self.perchannel:
            if weight:
                x = x.flatten(1)
            else:
                raise NotImplementedError  # activations: not transcribed
        else:
            x = x.flatten().unsqueeze(0)

        tmp = torch.zeros(x.shape[0], device=dev, dtype=x.dtype)
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)

        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1

        if self.maxq < 0:
            self.scale = xmax
            self.zero = xmin
        else:
            self.scale = (xmax - xmin) / self.maxq
            if self.sym:
                self.zero = torch.full_like(self.scale, (self.maxq + 1) / 2)
            else:
                self.zero = torch.round(-xmin / self.scale)

        assert not self.mse  # the mse grid search is not part of slabopt's gptq
        if not self.perchannel:
            tmp = shape[0]
            self.scale = self.scale.repeat(tmp)
            self.zero = self.zero.repeat(tmp)

        if weight:
            shape = [-1] + [1] * (len(shape) - 1)
            self.scale = self.scale.reshape(shape)
            self.zero = self.zero.reshape(shape)
            return

    def ready(self):
        return torch.all(self.scale != 0)


# ---- transcription of IST-DASLab/gptq gptq.py (class GPTQ, Linear layers) ---------------------------

class GPTQ:

    def __init__(self, weight):
        self.weight = weight  # layer.weight.data of a Linear layer
        self.dev = weight.device
        W = weight.clone()
        self.rows = W.shape[0]
        self.columns = W.shape[1]
        self.H = torch.zeros((self.columns, self.columns), device=self.dev, dtype=torch.float64)
        self.nsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp
        self.H += inp.matmul(inp.t())

    def fasterquant(self, blocksize=128, percdamp=.01, groupsize=-1, actorder=False, static_groups=False):
        W = self.weight.clone()
        W = W.double()
        self.codes = torch.zeros_like(W)  # added: the integer codes, for the comparison

        if not self.quantizer.ready():
            self.quantizer.find_params(W, weight=True)

        H = self.H
        del self.H
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        if static_groups:
            import copy
            groups = []
            for i in range(0, self.columns, groupsize):
                quantizer = copy.deepcopy(self.quantizer)
                quantizer.find_params(W[:, i:(i + groupsize)], weight=True)
                groups.append(quantizer)

        if actorder:
            perm = torch.argsort(torch.diag(H), descending=True)
            W = W[:, perm]
            H = H[perm][:, perm]
            invperm = torch.argsort(perm)

        Losses = torch.zeros_like(W)
        Q = torch.zeros_like(W)

        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(self.columns, device=self.dev)
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H

        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Losses1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if groupsize != -1:
                    if not static_groups:
                        if (i1 + i) % groupsize == 0:
                            self.quantizer.find_params(W[:, (i1 + i):(i1 + i + groupsize)], weight=True)
                    else:
                        idx = i1 + i
                        if actorder:
                            idx = perm[idx]
                        self.quantizer = groups[idx // groupsize]

                q = quantize(
                    w.unsqueeze(1), self.quantizer.scale, self.quantizer.zero, self.quantizer.maxq
                ).flatten()
                self.codes[:, i1 + i] = torch.clamp(  # added: the code quantize() rounded to
                    torch.round(w.unsqueeze(1) / self.quantizer.scale) + self.quantizer.zero, 0,
                    self.quantizer.maxq).flatten()
                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d ** 2

                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1

            Q[:, i1:i2] = Q1
            Losses[:, i1:i2] = Losses1 / 2

            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        if actorder:
            Q = Q[:, invperm]
            self.codes = self.codes[:, invperm]  # added

        self.weight = Q.reshape(self.weight.shape).to(self.weight.dtype)


def reference_gptq(W, X, *, bits, group_size, sym, act_order, static_groups=False, blocksize=128):
    """The authors' pipeline for one Linear layer (opt.py: perchannel=True, mse=False)."""
    g = GPTQ(torch.from_numpy(W.copy()))
    g.add_batch(torch.from_numpy(X)[:, None, :])  # N samples of one token: H = 2/N·XᵀX
    g.quantizer = Quantizer()
    g.quantizer.configure(bits, perchannel=True, sym=sym, mse=False)
    g.fasterquant(blocksize=blocksize, percdamp=.01, groupsize=-1 if group_size is None else group_size,
                  actorder=act_order, static_groups=static_groups)
    return g.weight.numpy(), g.codes.numpy().astype(np.uint8)


# ---- test layers --------------------------------------------------------------------------------

def layer(seed, m=96, n=384, N=768, dead=()):
    """Heavy-tailed weights with outlier rows and entries; correlated inputs with spread scales and
    a few outlier channels. X is scaled so that the authors' H = 2/N·XᵀX has max diagonal 1: it is
    then slabopt's H too (H = XᵀX / max_j ‖X_j‖²), which matters only for dead inputs, whose
    H_jj = 1 the authors put into the mean of the damping."""
    rng = np.random.default_rng(seed)
    W = rng.standard_t(2.5, size=(m, n)) * np.exp(rng.normal(0, 0.5, (m, 1))) * 0.02
    W[rng.random((m, n)) < 0.002] *= 25
    Z = rng.standard_normal((N, n))
    mix = np.eye(n) + rng.standard_normal((n, n)) * (0.6 / np.sqrt(n))
    X = (Z @ mix + 0.8 * rng.standard_normal((N, 4)) @ rng.standard_normal((4, n))) * np.exp(
        rng.normal(0, 0.7, n))
    X[:, rng.choice(n, 3, replace=False)] *= 15
    X[:, list(dead)] = 0
    X *= np.sqrt(N / 2 / np.max(np.sum(X * X, axis=0)))
    return W, X


CASES = [  # (bits, group_size, sym, act_order, static_groups, n)
    (4, None, False, False, False, 384),
    (4, None, False, True, False, 384),
    (4, 128, False, False, False, 384),
    (4, 128, False, True, False, 384),
    (3, 128, True, False, False, 320),   # symmetric, a shorter last block and group
    (4, 192, False, False, False, 384),  # groups start inside blocks: refitted on the W of the loop
    (2, 32, False, True, False, 256),    # several groups per block, act_order
    (8, None, True, True, False, 256),
    (4, 64, False, True, True, 320),     # static groups with act_order
]


def _compare(W, X, bits, group_size, sym, act_order, static_groups=False, blocksize=128):
    Q_ref, codes_ref = reference_gptq(W, X, bits=bits, group_size=group_size, sym=sym, act_order=act_order,
                                      static_groups=static_groups, blocksize=blocksize)
    res = slabopt.solve(W, X, ratio=None, method="gptq", bits=bits, group_size=group_size, symmetric=sym,
                        act_order=act_order, static_groups=static_groups, blocksize=blocksize)
    codes = res.quant.codes
    assert codes.dtype == np.uint8 and codes.shape == W.shape and int(codes.max()) <= 2**bits - 1
    same = float(np.mean(codes == codes_ref))
    diff = float(np.max(np.abs(res.reconstruct() - Q_ref)))
    assert same >= 0.999, same
    assert diff <= 1e-12 * float(np.max(np.abs(W))), diff
    return res, Q_ref


@pytest.mark.parametrize(("bits", "group_size", "sym", "act_order", "static_groups", "n"), CASES)
def test_gptq_matches_the_authors_code(bits, group_size, sym, act_order, static_groups, n):
    W, X = layer(seed=bits * 1000 + n + (group_size or 0) + 7 * act_order, n=n)
    res, _ = _compare(W, X, bits, group_size, sym, act_order, static_groups)
    rtn = slabopt.solve(W, X, ratio=None, method="rtn", bits=bits, group_size=group_size, symmetric=sym)
    assert res.objective_full < rtn.objective_full  # the error feedback pays on the layer's outputs


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_matches_with_dead_inputs_and_another_blocksize(act_order):
    W, X = layer(seed=3, n=320, dead=(5, 130, 131))
    res, _ = _compare(W, X, 4, 128, False, act_order, blocksize=64)
    assert np.all(res.reconstruct()[:, [5, 130, 131]] == 0)


def test_gptq_without_correlations_is_rtn():
    """H diagonal (only d, or no activations): Hinv is diagonal, no error is fed forward."""
    rng = np.random.default_rng(4)
    W = rng.standard_t(3, size=(40, 300))
    d = rng.uniform(0.5, 2.0, 300)
    for kw in (dict(group_size=None, symmetric=True), dict(group_size=128, symmetric=False),
               dict(group_size=100, symmetric=True, bits=3)):
        rtn = slabopt.solve(W, ratio=None, method="rtn", **kw)
        for acts in ({}, {"col_norms": d}):
            g = slabopt.solve(W, ratio=None, method="gptq", **kw, **acts)
            np.testing.assert_array_equal(g.quant.codes, rtn.quant.codes)
            np.testing.assert_array_equal(g.reconstruct(), rtn.reconstruct())


def test_gptq_act_order_with_groups_stores_and_counts_a_group_index():
    W, X = layer(seed=9, n=320)
    res = slabopt.solve(W, X, ratio=None, method="gptq", group_size=128, act_order=True)
    q = res.quant
    G = 3
    assert q.group_index is not None and q.group_index.shape == (320,)
    assert np.bincount(q.group_index).tolist() == [128, 128, 64]
    # the group of a column is its rank in descending diag(XᵀX), integer-divided by the group size
    rank = np.empty(320, dtype=int)
    rank[np.argsort(-np.sum(X * X, axis=0), kind="stable")] = np.arange(320)
    np.testing.assert_array_equal(q.group_index, rank // 128)
    m, n = W.shape
    assert res.bits == 4 * m * n + 16 * 2 * m * G + n * math.ceil(math.log2(G))
    plain = slabopt.solve(W, X, ratio=None, method="gptq", group_size=128)
    assert plain.quant.group_index is None and plain.bits == 4 * m * n + 16 * 2 * m * G


def test_gptq_float32_and_torch_inputs():
    W, X = layer(seed=11, m=32, n=256)
    W32, X32 = W.astype(np.float32), X.astype(np.float32)
    res = slabopt.solve(torch.from_numpy(W32), torch.from_numpy(X32), ratio=None, method="gptq")
    q = res.quant
    assert isinstance(q.codes, torch.Tensor) and q.codes.dtype == torch.uint8
    assert q.scales.dtype == torch.float32 and q.zeros.dtype == torch.float32
    assert res.reconstruct().dtype == torch.float32
    ref = slabopt.solve(W32, X32, ratio=None, method="gptq")
    np.testing.assert_array_equal(q.codes.numpy(), ref.quant.codes)
    assert res.objective == pytest.approx(ref.objective, rel=1e-6)
