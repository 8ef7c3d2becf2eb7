"""Built-in solvers; importing this package registers them."""

from . import (  # noqa: F401
    admm,
    alternating,
    arb,
    billm,
    godec,
    gptq,
    magnitude,
    oats,
    rpca,
    rtn,
    slab_obs,
    slab_plus,
    sparsegpt,
    svd,
    two_level,
    wanda,
)
