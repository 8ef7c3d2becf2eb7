"""The solvers are device-clean on torch inputs, checked on the CPU: no tensor factory call of
``slabopt/`` makes a non-scalar tensor without naming its device, and the host–device
synchronisations of the iteration loops do not grow faster than a stated bound per iteration."""

import numpy as np
import pytest

import slabopt

torch = pytest.importorskip("torch")

from ._torch_modes import WATCHED, FactoryRecorder, SyncCounter  # noqa: E402

rng = np.random.default_rng(3)
W = torch.from_numpy(rng.standard_t(4, size=(16, 24))).float()
X = torch.from_numpy(rng.standard_normal((60, 24))).float()
FIXED_SIZE = {"billm", "arb"}  # binarizers: their size is fixed by their algorithm
# options that take other code paths: coded sparse values, N:M patterns, Rice positions, sketches
VARIANTS = [("alternating", {"sparse_bits": 4}), ("alternating", {"pattern": "2:4", "ratio": None}),
            ("alternating", {"positions": "rice"}), ("alternating", {"svd": "randomized", "rank": 3}),
            ("gptq", {"bits": 3, "ratio": None}), ("slab_obs", {"l_group": 8})]

PLANTED = str(WATCHED[0] / "_planted_for_tests.py")  # a frame that counts as the package's own
PLANTED_SOURCE = '''
import torch

def no_device():
    return torch.zeros(3, 4)

def named_device():
    return torch.zeros(3, 4, device="cpu")

def scalar():
    return torch.tensor(3.0)

def through_array_api():
    import array_api_compat.torch as xp
    return xp.zeros((3, 4), dtype=xp.float32)

def loop(x, n, sync):
    total = x.sum()
    for _ in range(n):
        total = total + (x.sum().item() if sync else x.sum())
    return total
'''


def planted() -> dict:
    """The functions of PLANTED_SOURCE, compiled as if they lived in ``slabopt/``."""
    scope: dict = {}
    exec(compile(PLANTED_SOURCE, PLANTED, "exec"), scope)
    return scope


def planted_site(code: str) -> str:
    """The call site the modes report for the planted line holding ``code``."""
    lines = PLANTED_SOURCE.splitlines()
    return f"slabopt/_planted_for_tests.py:{next(i for i, line in enumerate(lines, 1) if code in line)}"


def solve_options(method: str, options: dict) -> dict:
    """solve() keywords for a small run of ``method`` with ``options`` on top."""
    return {"ratio": None if method in FIXED_SIZE else 0.5, "rank": 2, "max_iter": 2, **options}


@pytest.mark.parametrize(("method", "options"),
                         [(m, {}) for m in sorted(slabopt.methods())] + VARIANTS)
def test_every_method_names_the_device_of_its_tensors(method, options):
    """No factory call of slabopt/ during a solve on torch inputs lacks a device."""
    with FactoryRecorder() as rec:
        res = slabopt.solve(W, X, method=method, **solve_options(method, options))
    assert isinstance(res.reconstruct(), torch.Tensor)
    assert rec.found == []


def test_the_recorder_catches_a_factory_without_device():
    """torch.zeros(3, 4) without a device, from a frame of slabopt/, is recorded at its line."""
    fns = planted()
    with FactoryRecorder() as rec:
        fns["no_device"]()
    assert rec.found == [(planted_site("torch.zeros(3, 4)"), "zeros")]


def test_the_recorder_lets_a_named_device_and_scalars_pass():
    """device="cpu" named, or a 0-dim tensor: nothing recorded."""
    fns = planted()
    with FactoryRecorder() as rec:
        fns["named_device"]()
        fns["scalar"]()
    assert rec.found == []


def test_the_recorder_looks_through_array_api_compat():
    """xp.zeros without a device is the caller's call, not array_api_compat's."""
    pytest.importorskip("array_api_compat")
    fns = planted()
    with FactoryRecorder() as rec:
        fns["through_array_api"]()
    assert rec.found == [(planted_site("xp.zeros("), "zeros")]


def test_the_recorder_ignores_calls_made_outside_the_package():
    """Calls from frames outside slabopt/ and llm/ (tests, torch, transformers) are not looked at."""
    with FactoryRecorder() as rec:
        torch.zeros(3, 4)  # this test file is not slabopt/ or llm/
    assert rec.found == []


# ------------------------------------------------------------------ synchronisations
# Per iteration, on torch inputs (measured as (count(2N) − count(N)) / N):
#   alternating: 1 host transfer of the objectives (the history, the tol rule and the descent
#     safeguard need f_t on the host; ‖M‖² and every candidate's f go in one ``to_floats``),
#     + 1 in the sparse step: ``top_k_rows`` reads the count of kept entries to know whether ties
#     need the exact repair (a data-dependent branch; the repair itself needs ``nonzero`` anyway).
#     It was 6 (5 scalar ``to_float`` calls + the count) before the objectives were batched.
#   admm: 1 transfer of g, the residuals and the norms of the stopping rule (was 6 ``to_float``
#     calls), + 1 count per sparse step, ``inner`` (default 2) sparse steps: 3 (was 8).
SYNC_BOUNDS = {"alternating": 2, "admm": 3}
SYNC_OPTIONS = {"alternating": {}, "admm": {"eps_abs": 0.0, "eps_rel": 0.0}}


def syncs_per_iteration(run, n: int) -> float:
    """(syncs of ``run(2n)`` − syncs of ``run(n)``) / n: what one more iteration costs."""
    counts = []
    for iters in (n, 2 * n):
        with SyncCounter() as sync:
            run(iters)
        counts.append(sync.total)
    return (counts[1] - counts[0]) / n


@pytest.mark.parametrize("method", sorted(SYNC_BOUNDS))
def test_solver_loops_synchronise_a_bounded_number_of_times_per_iteration(method):
    """One more iteration costs at most SYNC_BOUNDS[method] host reads."""
    def run(iters):
        """A solve that runs exactly ``iters`` iterations (no tolerance stops it)."""
        res = slabopt.solve(W, X, ratio=0.5, rank=2, method=method, max_iter=iters, tol=0,
                            **SYNC_OPTIONS[method])
        assert res.n_iter == iters  # every iteration ran: the difference is theirs

    per_iteration = syncs_per_iteration(run, 3)
    assert 0 < per_iteration <= SYNC_BOUNDS[method]


def test_the_sync_counter_catches_an_item_per_iteration():
    """A loop with an .item() per iteration costs 1 per iteration; the same loop without, 0."""
    fns = planted()
    x = torch.ones(4)
    assert syncs_per_iteration(lambda n: fns["loop"](x, n, sync=True), 3) == 1
    assert syncs_per_iteration(lambda n: fns["loop"](x, n, sync=False), 3) == 0


def test_the_sync_counter_sees_every_kind_of_host_read():
    """.item(), float(), int(), bool(), .cpu(), .numpy() and .tolist() are each counted."""
    fns = {}
    exec(compile("def reads(t):\n    return [t.item(), float(t), int(t), bool(t), t.cpu(), t.numpy(),"
                 " t.tolist()]\n", PLANTED, "exec"), fns)
    with SyncCounter() as sync:
        fns["reads"](torch.ones(1))
    assert sync.sites == {"slabopt/_planted_for_tests.py:2": 7}
