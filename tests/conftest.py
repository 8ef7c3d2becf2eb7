"""Shared test settings: one BLAS/torch thread, a fast hypothesis profile."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

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
