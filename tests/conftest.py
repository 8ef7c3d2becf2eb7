"""Shared test settings: one BLAS/torch thread, a fast hypothesis profile."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

try:  # pragma: no cover - depends on the environment
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny Llama folder with a small WordLevel tokenizer (no download, fast tokenisation), one per
    test module."""
    pytest.importorskip("transformers")
    from ._llm import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("tiny"))
