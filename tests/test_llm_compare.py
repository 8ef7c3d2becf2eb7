"""``slabopt compare`` (slabopt.llm.compare): the table and plot over methods and ratios or an
N:M pattern, on a tiny local checkpoint."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


from ._llm import run_cli as _run_cli  # noqa: E402


def test_cli_compare_writes_table_and_plot(tiny_checkpoint, tmp_path, capsys):
    code, so, err = _run_cli(["compare", "--model", str(tiny_checkpoint), "--ratios", "0.5",
                              "--methods", "magnitude", "slab", "--calib-tokens", "32", "--seqlen", "16",
                              "--tokens", "32", "--max-iter", "2", "--work-dir", str(tmp_path / "w"),
                              "--no-progress"], capsys)
    assert code == 0, err
    assert "| dense" in so and "| slab | 0.5 |" in so and "| magnitude | 0.5 |" in so
    assert (tmp_path / "w" / "results.png").stat().st_size > 1000
    assert (tmp_path / "w" / "results.md").is_file()


def test_cli_compare_at_an_nm_pattern(tiny_checkpoint, tmp_path, capsys):
    code, so, err = _run_cli(["compare", "--model", str(tiny_checkpoint), "--pattern", "2:4", "--methods",
                              "wanda", "slab", "--calib-tokens", "32", "--seqlen", "16", "--tokens", "32",
                              "--max-iter", "2", "--work-dir", str(tmp_path / "w"), "--no-progress"], capsys)
    assert code == 0, err
    assert "| wanda | - (fixed) |" in so and "| slab | - (fixed) |" in so and "pattern 2:4" in so
    assert (tmp_path / "w" / "slab-2of4-rank1" / "manifest.json").is_file()
