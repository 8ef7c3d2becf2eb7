"""What the commands print: messages on their own lines, never glued to a progress bar; --quiet."""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from slabopt.llm import cli, pipeline  # noqa: E402
from slabopt.llm.errors import UserError  # noqa: E402

from ._llm import save_checkpoint  # noqa: E402


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that progress bars are drawn into it."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _args(ckpt, out, *extra):
    return ["compress", "--model", str(ckpt), "--calib-tokens", "32", "--seqlen", "16", "--max-iter", "1",
            "--rank", "1", "--out", str(out), *extra]


def _fail_at_block_one(monkeypatch):
    original = pipeline._solve_layer

    def solve(mod, st, b, *a, **k):
        if b == 1:
            raise UserError("planted failure at block 1")
        return original(mod, st, b, *a, **k)

    monkeypatch.setattr(pipeline, "_solve_layer", solve)


def test_an_error_during_the_bars_is_on_its_own_last_line(ckpt, tmp_path, monkeypatch):
    _fail_at_block_one(monkeypatch)
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main(_args(ckpt, tmp_path / "o")) == 2
    text = err.getvalue()
    assert "block/s" in text  # the bar was drawn
    assert "\nslabopt: error: planted failure at block 1\n" in text
    assert text.endswith("slabopt: error: planted failure at block 1\n")  # no bar redrawn after it


def test_an_interrupt_during_the_bars_is_on_its_own_last_line(ckpt, tmp_path, monkeypatch):
    def interrupt(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_solve_layer", interrupt)
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main(_args(ckpt, tmp_path / "o")) == 130
    text = err.getvalue()
    assert "\nslabopt: interrupted" in text and text.rstrip().endswith("--resume)")


def test_quiet_prints_no_bars_and_keeps_the_result(ckpt, tmp_path, monkeypatch, capsys):
    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    assert cli.main(_args(ckpt, tmp_path / "o", "--quiet", "--bits", "3")) == 0
    out = capsys.readouterr().out
    assert err.getvalue() == ""
    assert "bits per weight" in out and "using" not in out  # the summary, not the recipe's notice


def test_without_a_terminal_there_are_no_bars(ckpt, tmp_path, capsys):
    assert cli.main(_args(ckpt, tmp_path / "o")) == 0
    assert "block/s" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compress", "eval", "export", "compare", "info"])
def test_every_command_takes_quiet(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    assert "--quiet" in sub.choices[command].format_help()


def test_into_a_log_transformers_draws_no_bars(ckpt, tmp_path, capfd):
    """stderr not a terminal: neither our bars nor transformers' ("Loading weights") reach the log."""
    assert cli.main(_args(ckpt, tmp_path / "o")) == 0
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err
