"""Built-in solvers; importing this package registers them."""

from . import alternating  # noqa: F401
