"""The documentation site (mkdocs.yml) builds with ``--strict`` (no broken link, anchor or
docstring), and its API page holds the docstrings rendered by mkdocstrings."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_strict_build_renders_the_api_docstrings(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert "Decompose W" in api  # slabopt.solve's docstring
    headings = {re.sub(r"<[^>]+>|&para;|\s", "", re.sub(r"<small.*?</small>", "", h, flags=re.S))
                for h in re.findall(r"<h2[^>]*>(.*?)</h2>", api, re.S)}  # heading text, labels dropped
    documented = {"slabopt.solve", "slabopt.layer_budget", "slabopt.budget", "slabopt.methods",
                  "slabopt.register_method", "slabopt.SolveResult", "slabopt.llm.load",
                  "slabopt.llm.load_compressed"}
    assert documented <= headings, sorted(documented - headings)
    assert ":func:<code>" not in api  # the hook drops Sphinx roles before code spans
    for page in ("getting-started", "concepts", "howto/export", "results", "formulation"):
        assert (site / page / "index.html").is_file(), page
