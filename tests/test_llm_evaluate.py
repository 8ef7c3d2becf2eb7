"""``slabopt eval`` (slabopt.llm.evaluate): perplexity and zero-shot of a folder or the dense
model, and its error paths."""

from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from slabopt.llm.errors import UserError  # noqa: E402

from ._llm import run_cli as _run_cli  # noqa: E402
from ._llm import save_checkpoint  # noqa: E402


def test_cli_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    code, _, err = _run_cli(["eval", "dense", "--model", str(tmp_path / "m")], capsys)
    assert code == 2 and "config.json" in err


def test_cli_eval_missing_folder(tmp_path, capsys):
    code, _, err = _run_cli(["eval", str(tmp_path / "none")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _run_cli(["eval", str(tmp_path / "empty")], capsys)
    assert code == 2 and "manifest" in err


def test_cli_eval_and_compare_report_zero_shot(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    from slabopt.llm.zeroshot import data_dir

    try:
        data_dir()
    except UserError as exc:
        pytest.skip(str(exc))
    tiny_checkpoint = save_checkpoint(tmp_path / "long", max_positions=2048)  # room for a choice
    code, so, err = _run_cli(["eval", "dense", "--model", str(tiny_checkpoint), "--tokens", "32", "--seqlen",
                              "16", "--tasks", "piqa,arc_easy", "--limit", "4", "--json"], capsys)
    assert code == 0, err
    res = json.loads(so)
    assert set(res["tasks"]) == {"piqa", "arc_easy"} and res["tasks"]["piqa"]["n"] == 4
    assert res["zero_shot_average"] == pytest.approx((res["tasks"]["piqa"]["acc"] +
                                                       res["tasks"]["arc_easy"]["acc"]) / 2)
    code, so, err = _run_cli(["compare", "--model", str(tiny_checkpoint), "--ratios", "0.5", "--methods",
                              "wanda", "--calib-tokens", "32", "--seqlen", "16", "--tokens", "32",
                              "--work-dir", str(tmp_path / "w"), "--no-progress", "--tasks", "piqa",
                              "--limit", "4"], capsys)
    assert code == 0, err
    assert "zero-shot avg (acc)" in so and "first 4 documents" in so
    rows = json.loads((tmp_path / "w" / "results.json").read_text())["rows"]
    assert all(0 <= r["zero_shot_average"] <= 1 for r in rows) and len(rows) == 2


def test_cli_eval_zero_shot_alone(tmp_path, capsys):
    """--tokens 0 skips the perplexity: zero-shot only."""
    pytest.importorskip("lm_eval")
    from slabopt.llm.zeroshot import data_dir

    try:
        data_dir()
    except UserError as exc:
        pytest.skip(str(exc))
    ckpt = save_checkpoint(tmp_path / "long", max_positions=2048)
    code, so, err = _run_cli(["eval", "dense", "--model", str(ckpt), "--tokens", "0", "--tasks", "piqa",
                              "--limit", "2", "--json"], capsys)
    assert code == 0, err
    res = json.loads(so)
    assert "perplexity" not in res and res["tasks"]["piqa"]["n"] == 2


def test_cli_eval_tokens_zero_needs_tasks(tmp_path, capsys):
    code, _, err = _run_cli(["eval", "dense", "--tokens", "0"], capsys)
    assert code == 2 and "--tasks" in err and "Traceback" not in err


def test_cli_eval_of_a_plain_checkpoint_points_to_eval_dense(tiny_checkpoint, tmp_path, capsys):
    code, _, err = _run_cli(["eval", str(tiny_checkpoint)], capsys)
    assert code == 2 and f"slabopt eval dense --model {tiny_checkpoint}" in err
