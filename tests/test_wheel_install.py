"""The package as a user installs it: the wheel in a fresh virtual environment outside the
repository, then ``slabopt --version``, ``compress`` and ``eval`` on a tiny model with the user's own
text (slow: it installs torch and transformers from PyPI into the new environment)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ._llm import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv: list, cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def test_the_wheel_installs_and_runs_outside_the_repository(tmp_path):
    pytest.importorskip("transformers")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", REPO], tmp_path)
    wheel = next((tmp_path / "dist").glob("slabopt-*.whl"))
    env = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", env], tmp_path)
    pip = [env / "bin" / "python", "-m", "pip", "install", "-q"]
    _run([*pip, "torch==2.13.0"], tmp_path)
    _run([*pip, f"{wheel}[llm]"], tmp_path)
    slabopt = env / "bin" / "slabopt"
    assert _run([slabopt, "--version"], tmp_path).stdout.startswith("slabopt ")
    assert _run([env / "bin" / "python", "-c", "import importlib.util as u; "
                 "print(u.find_spec('proofs_checks') is None)"], tmp_path).stdout.strip() == "True"
    ckpt = save_checkpoint(tmp_path / "ckpt")
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    _run([slabopt, "compress", "--model", ckpt, "--calib-file", text, "--calib-tokens", "64",
          "--seqlen", "16", "--rank", "1", "--out", tmp_path / "out", "-q"], tmp_path)
    res = json.loads(_run([slabopt, "eval", tmp_path / "out", "--eval-file", text, "--tokens", "64",
                           "--seqlen", "16", "--json"], tmp_path).stdout)
    assert res["perplexity"] > 1
