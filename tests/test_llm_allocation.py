"""Non-uniform budgets across blocks (``--allocation owl``, llm/allocation.py)."""

from __future__ import annotations

import os
from fractions import Fraction

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from slabopt.llm import allocation  # noqa: E402
from slabopt.llm.errors import UserError  # noqa: E402
from slabopt.llm.pipeline import compress_model  # noqa: E402

from ._llm import tiny_model, windows  # noqa: E402


def test_block_ratios_keep_the_total_and_favour_outliers():
    outliers = [0.01, 0.03, 0.02, 0.01]
    sizes = [10, 10, 30, 10]
    r = allocation.block_ratios(outliers, sizes, 0.5)
    assert sum(s * x for s, x in zip(sizes, r, strict=True)) == pytest.approx(0.5 * sum(sizes), abs=1e-12)
    assert r[1] < r[2] < r[0] == r[3]  # more outliers, lower ratio (more kept)
    assert max(r) - min(r) == pytest.approx(2 * allocation.OWL_LAMBDA)
    assert allocation.block_ratios([0.02, 0.02], [1, 1], 0.6) == [0.6, 0.6]
    with pytest.raises(ValueError, match="leaves"):
        allocation.block_ratios([0.0, 1.0], [1, 1], 0.95)


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    lin = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 100.0], [1.0, 1.0, 1.0, 1.0]]))
    d = {"a": torch.ones(4)}
    assert allocation.outlier_ratio({"a": lin}, d) == pytest.approx(1 / 8)  # 100 > 5 · mean (13.4)


def test_owl_compression_stays_within_the_total(tmp_path):
    man = compress_model(tiny_model(layers=3), windows(n=4, seqlen=16), tmp_path / "o", method="slab",
                         ratio=0.6, rank=1, max_iter=2, positions="bitmask", allocation="owl",
                         progress=False, log=None)
    assert man["settings"]["allocation"] == "owl"
    total = sum(e["bits"] for e in man["layers"])
    dense = sum(16 * e["shape"][0] * e["shape"][1] for e in man["layers"])
    assert Fraction(total, dense) <= Fraction(2, 5)
    per_block = {}
    for e in man["layers"]:
        per_block.setdefault(e["block"], []).append(e["ratio"])
    means = [sum(v) / len(v) for v in per_block.values()]
    assert max(means) - min(means) > 0.05  # the blocks did get different budgets


def test_owl_needs_a_ratio_and_one_process(tmp_path):
    with pytest.raises(UserError, match="give --ratio"):
        compress_model(tiny_model(), windows(), tmp_path / "o", method="slab", ratio=None, pattern="2:4",
                       allocation="owl", progress=False, log=None)
    with pytest.raises(UserError, match="allocation must be one of"):
        compress_model(tiny_model(), windows(), tmp_path / "p", method="slab", allocation="even",
                       progress=False, log=None)


def test_owl_resume_gives_the_same_folder(tmp_path):
    kw = dict(method="slab", ratio=0.6, rank=1, max_iter=2, positions="bitmask", allocation="owl",
              progress=False, log=None)

    def kill(b):
        if b == 0:
            raise KeyboardInterrupt

    straight = compress_model(tiny_model(layers=3), windows(n=4, seqlen=16), tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        compress_model(tiny_model(layers=3), windows(n=4, seqlen=16), tmp_path / "b", on_block_done=kill,
                       **kw)
    resumed = compress_model(tiny_model(layers=3), windows(n=4, seqlen=16), tmp_path / "b", resume=True, **kw)
    assert [e["bits"] for e in resumed["layers"]] == [e["bits"] for e in straight["layers"]]
    assert resumed["files"] == straight["files"]
