"""``slabopt`` under torchrun with one rank failing on purpose (tests/test_llm_distributed.py).

``SLABOPT_TEST_FAIL=RANK:BLOCK:HOW``: on rank RANK, the first layer solve of block BLOCK raises a
``UserError`` (HOW = raise) or ends the process at once (HOW = exit).
"""

import os
import sys

from slabopt.llm import cli, pipeline
from slabopt.llm.errors import UserError

RANK, BLOCK, HOW = os.environ["SLABOPT_TEST_FAIL"].split(":")
real = pipeline._solve_layer


def failing(mod, st, b, j, name, *args):
    if os.environ.get("RANK") == RANK and b == int(BLOCK):
        if HOW == "exit":
            os._exit(3)
        raise UserError(f"injected failure on rank {RANK} in block {b}")
    return real(mod, st, b, j, name, *args)


pipeline._solve_layer = failing
sys.exit(cli.main())
