"""What the commands show while they work: progress bars and notices, and ``--quiet``.

One rule for all of ``llm/``: bars are drawn only on a terminal (never into a log) and never with
``--quiet``; notices are written above any bar that is showing (``tqdm.write``), so that no message
is glued to a bar's line; every bar is closed when its work ends or fails, so that the error or
interrupt message printed afterwards starts a line of its own and nothing is redrawn after it.
Results (the summary of ``compress``, perplexities, tables) are printed by the commands themselves
and are not affected by ``--quiet``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no bars and no notices from here on (errors and results are still printed).
    The bars of transformers and the Hub ("Loading weights", "Writing model shards") follow the
    same rule as ours: off with ``--quiet`` and when standard error is not a terminal (a log)."""
    global _QUIET
    _QUIET = bool(quiet)
    if not bars_shown():
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:  # pragma: no cover - transformers is part of the llm extra
            pass


def quiet() -> bool:
    return _QUIET


def bars_shown() -> bool:
    """Whether bars are drawn: not ``--quiet``, and standard error is a terminal."""
    stream = sys.stderr
    return not _QUIET and bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any):
    """A tqdm bar on standard error, drawn when ``enabled`` and :func:`bars_shown` (else a silent
    one whose methods do nothing); close it in ``finally`` (or use it as a context manager) so
    that it is closed when the work fails."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, disable=not (enabled and bars_shown()), dynamic_ncols=True,
                **kwargs)


def notice(message: str, *, stream=None) -> None:
    """A line for the user (standard output unless ``stream``), above any bar that is showing;
    nothing with ``--quiet``."""
    if _QUIET:
        return
    from tqdm import tqdm

    tqdm.write(message, file=stream or sys.stdout)
