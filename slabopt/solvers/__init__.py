"""Built-in solvers; importing this package registers them."""

from . import (  # noqa: F401
    admm,
    alternating,
    godec,
    magnitude,
    oats,
    rpca,
    slab_plus,
    sparsegpt,
    svd,
    two_level,
    wanda,
)
