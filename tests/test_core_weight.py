"""One representation of Ŵ: slabopt.dense_weight, used by solve and SolveResult.reconstruct."""

import numpy as np
import pytest

import slabopt
from slabopt import dense_weight
from slabopt.binarized import BinarizedMatrix

rng = np.random.default_rng(11)
W = rng.standard_t(4, size=(12, 16)) + rng.standard_normal((12, 1))
X = rng.standard_normal((40, 16))


def by_hand(S, U=None, V=None, B=None, levels=None, row_offset=None, quant=None):
    """Ŵ = S + (U Vᵀ) ⊙ B + where(B, high, low) + c·1ᵀ + scale·(code − zero) written out in NumPy."""
    W_hat = S.copy()
    if U is not None:
        W_hat += (U @ V.T) * (1 if B is None else B)
    if levels is not None:
        W_hat += np.where(B > 0, levels[1][:, None], levels[0][:, None])
    if row_offset is not None:
        W_hat += row_offset[:, None]
    if isinstance(quant, BinarizedMatrix):
        W_hat += binarized_by_hand(quant)
    elif quant is not None:
        n = S.shape[1]
        group = [quant.group_index[j] if quant.group_index is not None
                 else (0 if quant.group_size is None else j // quant.group_size) for j in range(n)]
        for j in range(n):
            zero = 2.0 ** (quant.bits - 1) if quant.zeros is None else quant.zeros[:, group[j]]
            W_hat[:, j] += quant.scales[:, group[j]] * (quant.codes[:, j].astype(float) - zero)
    return W_hat


def binarized_by_hand(q):
    """Ŵ_ij = Σ_k μ_{b,t,k}[i] + α_{b,t,k}[i]·β_{t,k}[j]·s_{k,ij} of slabopt.binarized, entry by entry:
    term t = 2·h + k on salient columns (h the salient group, 0 without CGB), 2·(salient groups) + h
    elsewhere; β = 1 and μ = 0 when not stored."""
    lay = q.layout
    m, n = lay.shape
    salient = np.flatnonzero(q.salient)
    other = np.flatnonzero(~q.salient)
    out = np.zeros((m, n))
    for i in range(m):
        for j in range(n):
            b = j // lay.blocksize
            if q.salient[j]:
                c = int(np.searchsorted(salient, j))
                h = 0 if q.salient_groups is None else int(q.salient_groups[i, c])
                planes = [q.signs[i, j], q.signs2[i, c]]
                terms = [2 * h, 2 * h + 1]
                betas = None if q.column_scales_salient is None else q.column_scales_salient[terms, c]
            else:
                c = int(np.searchsorted(other, j))
                h = int(q.groups[i, c])
                planes, terms = [q.signs[i, j]], [2 * lay.salient_groups + h]
                betas = None if q.column_scales_other is None else q.column_scales_other[[h], c]
            for k, (plus, t) in enumerate(zip(planes, terms, strict=True)):
                value = q.row_scales[b, t, i] * (1.0 if betas is None else betas[k])
                out[i, j] += (value if plus else -value) + (0.0 if q.row_means is None
                                                            else q.row_means[b, t, i])
    return out


def test_each_term_only_when_given():
    S = rng.standard_normal((4, 6))
    U, V = rng.standard_normal((4, 2)), rng.standard_normal((6, 2))
    B = np.where(rng.random((4, 6)) < 0.5, -1.0, 1.0)
    levels, c = rng.standard_normal((2, 4)), rng.standard_normal(4)
    np.testing.assert_array_equal(dense_weight(S), S)
    np.testing.assert_allclose(dense_weight(S, U=U, V=V), S + U @ V.T)
    np.testing.assert_allclose(dense_weight(S, U=U, V=V, B=B), by_hand(S, U, V, B))
    np.testing.assert_allclose(dense_weight(S, U=U, V=V, B=B > 0), by_hand(S, U, V, B))
    np.testing.assert_allclose(dense_weight(S, B=B, levels=levels), by_hand(S, B=B, levels=levels))
    np.testing.assert_allclose(dense_weight(S, B=B > 0, levels=levels, row_offset=c),
                               by_hand(S, B=B, levels=levels, row_offset=c))
    np.testing.assert_allclose(dense_weight(S, row_offset=c), S + c[:, None])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"U": np.ones((4, 1))}, "U and V"), ({"levels": np.ones((2, 4))}, "levels need B")],
)
def test_incomplete_parts_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dense_weight(np.zeros((4, 6)), **kwargs)


def test_torch_matches_numpy():
    torch = pytest.importorskip("torch")
    S, U, V = rng.standard_normal((4, 6)), rng.standard_normal((4, 1)), rng.standard_normal((6, 1))
    B, levels, c = rng.random((4, 6)) < 0.5, rng.standard_normal((2, 4)), rng.standard_normal(4)
    t = {k: torch.from_numpy(v) for k, v in dict(U=U, V=V, B=B, levels=levels, row_offset=c).items()}
    got = dense_weight(torch.from_numpy(S), **t)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), dense_weight(S, U=U, V=V, B=B, levels=levels, row_offset=c))


QUANT_OPTIONS = {"rtn": [{}, {"group_size": None}, {"bits": 3, "group_size": 5, "symmetric": True}],
                 "gptq": [{}, {"group_size": None}, {"bits": 2, "group_size": 8, "act_order": True}],
                 "arb": [{}], "billm": [{}]}
FIXED_SIZE = {"arb", "billm"}  # binarizers: their size is fixed by their algorithm, above ratio 0.5 here


@pytest.mark.parametrize(("method", "options"),
                         [(m, o) for m in sorted(slabopt.methods()) for o in QUANT_OPTIONS.get(m, [{}])])
def test_reconstruct_is_dense_weight_of_the_parts(method, options):
    ratio = None if method in FIXED_SIZE else 0.5
    res = slabopt.solve(W, X, ratio=ratio, rank=2, method=method, max_iter=3, **options)
    parts = dict(U=res.U, V=res.V, B=res.signs(), levels=res.levels, row_offset=res.row_offset,
                 quant=res.quant)
    assert (res.quant is not None) is (method in QUANT_OPTIONS)
    S = res.sparse.to_dense()
    np.testing.assert_array_equal(res.reconstruct(), dense_weight(S, **parts))
    np.testing.assert_allclose(res.reconstruct(), by_hand(S, **parts), rtol=1e-12, atol=1e-12)
    assert res.objective == pytest.approx(slabopt.objective(W, res.reconstruct(), X).diagonal, rel=1e-9)


@pytest.mark.parametrize(("method", "options"),
                         [("billm", {"blocksize": 5, "salient_search": 3}),
                          ("billm", {"blocksize": 6, "metric": "magnitude"}),
                          ("arb", {"blocksize": 5, "salient_search": 4}),
                          ("arb", {"blocksize": 7, "column_group_bitmap": False})])
def test_binarized_reconstruct_is_the_equation_over_several_blocks(method, options):
    """Blocks of 5 to 7 columns (the last one shorter), with and without CGB and means: Ŵ entry by
    entry from the stored part, and the counted bits from its exact number of salient columns."""
    res = slabopt.solve(W, X, ratio=None, method=method, max_iter=3, **options)
    q = res.quant
    assert q.layout.n_blocks == -(-W.shape[1] // options["blocksize"]) > 2
    assert 0 < q.layout.salient_columns == int(np.sum(q.salient)) <= q.layout.most_salient()
    np.testing.assert_allclose(res.reconstruct(), binarized_by_hand(q), rtol=1e-12, atol=1e-12)
    assert res.bits == q.storage_bits(16) <= res.budget.bits


def test_two_level_result_carries_levels():
    res = slabopt.solve(W, X, ratio=0.5, method="two_level")
    assert tuple(res.levels.shape) == (2, W.shape[0]) and res.row_offset is None
    assert np.all(res.levels[0] <= res.levels[1])
    assert "levels" not in res.info


def test_slab_offset_result_carries_row_offset_and_it_matters():
    res = slabopt.solve(W, X, ratio=0.5, rank=1, method="slab_offset")
    assert tuple(res.row_offset.shape) == (W.shape[0],) and res.levels is None
    S = res.sparse.to_dense()
    full = dense_weight(S, U=res.U, V=res.V, B=res.signs(), row_offset=res.row_offset)
    dropped = dense_weight(S, U=res.U, V=res.V, B=res.signs())
    np.testing.assert_array_equal(res.reconstruct(), full)
    assert np.max(np.abs(full - dropped)) > 1e-3
    assert slabopt.objective(W, dropped, X).diagonal > 1.01 * res.objective
