"""Seeded "real-looking" layer problems: heavy-tailed weights and activation norms spread over
about two orders of magnitude (the shape of LLM statistics), without needing a model."""

import numpy as np


def layer_problem(m: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """W (m×n, float32, Student-t(3) / 50) and column norms d (n, log-normal σ = 1)."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_t(3, size=(m, n)) / 50).astype(np.float32)
    d = rng.lognormal(0.0, 1.0, n).astype(np.float32)
    return W, d
