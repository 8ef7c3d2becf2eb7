"""``torchrun -m slabopt.llm compress`` on 2 CPU processes with Gloo.

Every run is a real torchrun launch of the CLI on a tiny saved checkpoint, compared with the same
CLI in one process (both at 1 thread, so the float sums are done in the same order).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from slabopt.llm import distributed  # noqa: E402
from slabopt.llm.checkpoint import read_manifest  # noqa: E402
from slabopt.llm.loading import load_compressed  # noqa: E402
from slabopt.llm.slablinear import SLaBLinear  # noqa: E402

from ._llm import save_checkpoint  # noqa: E402

ARGS = ["--calib-tokens", "64", "--seqlen", "16", "--max-iter", "3", "--threads", "1"]
FAIL_SCRIPT = Path(__file__).with_name("_dist_fail.py")
LIMIT = 120  # seconds: a run that takes longer hangs


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return dict(env, OMP_NUM_THREADS="1")


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT, env=_env())


def _torchrun(*args, target=("-m", "slabopt.llm")) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                 *target, "compress", *map(str, args)])


def _compress(ckpt, out, *extra) -> list[str]:
    return ["--model", ckpt, *ARGS, "--out", out, *extra]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("dist_ckpt"), layers=3)


@pytest.fixture(scope="module")
def single(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_single") / "out"
    r = _run([sys.executable, "-m", "slabopt.llm", "compress", *map(str, _compress(ckpt, out))])
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _same_folder(a: Path, b: Path) -> None:
    """Same files, byte for byte (by the manifest's SHA-256 and on disk), same settings and layers."""
    ma, mb = read_manifest(a), read_manifest(b)
    assert ma["complete"] and mb["complete"]
    assert ma["files"] == mb["files"] and len(ma["files"]) > 5
    for name in ma["files"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert ma["settings"] == mb["settings"]

    def no_time(layers):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in layers]
    assert no_time(ma["layers"]) == no_time(mb["layers"])


def test_weight_parallel_writes_the_same_bytes_as_one_process(ckpt, single, tmp_path):
    r = _torchrun(*_compress(ckpt, tmp_path / "wp"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("compressed slab ratio 0.5") == 1  # only rank 0 prints
    _same_folder(single, tmp_path / "wp")


def _nll(model, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=tokens, labels=tokens).loss)


def test_data_parallel_masks_and_perplexity_agree(ckpt, single, tmp_path):
    r = _torchrun(*_compress(ckpt, tmp_path / "dp", "--data-parallel"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _mask_agreement(single, tmp_path / "dp") >= 0.999
    a, _ = load_compressed(single)
    b, man = load_compressed(tmp_path / "dp")
    tokens = torch.randint(0, a.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(3))
    pa, pb = math.exp(_nll(a, tokens)), math.exp(_nll(b, tokens))
    assert abs(pb / pa - 1) <= 0.005, (pa, pb)
    assert man["settings"] == read_manifest(single)["settings"]


def _mask_agreement(a: Path, b: Path) -> float:
    """Fraction of equal entries of the sparse patterns of every compressed layer of two folders."""
    ma, _ = load_compressed(a)
    mb, _ = load_compressed(b)
    la = {n: m for n, m in ma.named_modules() if isinstance(m, SLaBLinear)}
    lb = {n: m for n, m in mb.named_modules() if isinstance(m, SLaBLinear)}
    assert la.keys() == lb.keys() and len(la) == 21
    same = sum(int((la[n].positions() == lb[n].positions()).sum()) for n in la)
    return same / sum(la[n].positions().numel() for n in la)


@pytest.mark.parametrize("how, mode", [("raise", []), ("exit", ["--data-parallel"])])
def test_a_failing_rank_stops_every_rank_and_resume_finishes(ckpt, single, tmp_path, how, mode):
    """Rank 1 fails in block 1 (an error, or the process dies): the run exits non-zero, quickly, with
    the error shown once; the folder holds block 0, and a torchrun --resume finishes it (weight
    parallel: to the same bytes as one process)."""
    out = tmp_path / "f"
    env = dict(SLABOPT_TEST_FAIL=f"1:1:{how}")
    t0 = time.monotonic()
    args = _compress(ckpt, out, "--dist-timeout", "60", *mode)
    r = _run_with(env, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(FAIL_SCRIPT), "compress", *map(str, args)])
    assert time.monotonic() - t0 < 60
    assert r.returncode != 0
    if how == "raise":
        assert r.stderr.count("injected failure on rank 1 in block 1") == 1, r.stderr
        assert r.stderr.count("slabopt: error:") == 1, r.stderr
        assert "Traceback" not in r.stderr.split("slabopt: error:")[0], r.stderr
    assert read_manifest(out)["next_block"] == 1
    r = _torchrun(*_compress(ckpt, out, "--resume", *mode))
    assert r.returncode == 0, r.stdout + r.stderr
    if mode:
        assert _mask_agreement(single, out) >= 0.999
    else:
        _same_folder(single, out)


def _run_with(extra_env: dict, cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT, env=dict(_env(), **extra_env))


def test_errors_before_the_work_are_shown_once(ckpt, single):
    r = _torchrun(*_compress(ckpt, single))  # the folder exists: no --resume, no --overwrite
    assert r.returncode != 0
    assert r.stderr.count("slabopt: error: output folder") == 1, r.stderr


def test_layers_are_balanced_by_cost():
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    costs = [distributed.layer_cost(s, 1, 20, False) for s in shapes]
    owner = distributed.assign_layers(costs, 2)
    load = [sum(c for c, o in zip(costs, owner, strict=True) if o == r) for r in range(2)]
    assert max(load) / sum(costs) < 0.52
    assert distributed.assign_layers(costs, 1) == [0] * 7
    assert distributed.window_bounds(5, 2) == [(0, 3), (3, 5)]


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu") is distributed.SINGLE
    assert distributed.compute_device("cuda") == "cuda"
    assert not dist.is_initialized()
    assert json.dumps(distributed.SINGLE.share(7).indices(7)) == "[0, 7, 1]"
