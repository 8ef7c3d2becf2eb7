"""``python -m slabopt.llm`` is the ``slabopt`` command."""

import sys

from .cli import main

sys.exit(main())
