"""Calibration and evaluation text (slabopt.llm.data)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def test_wiki_split_follows_spec():
    from slabopt.llm.data import wiki_articles

    try:
        arts = wiki_articles()
    except Exception as exc:  # package not installed
        pytest.skip(str(exc))
    assert len(arts) > 10000 - 100
    assert arts[0].startswith("0\n")
