"""The pipeline's settings come from one place (llm/recipe.py): Python callers giving only a size get
what ``slabopt compress`` gets, each default is stated once, and the checks are the library's."""

from __future__ import annotations

import ast
import json
from dataclasses import fields, replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from slabopt.llm import cli, pipeline, recipe
from slabopt.llm.errors import UserError
from slabopt.llm.pipeline import CompressConfig, compress_model

import slabopt

from ._llm import quick_compress_args, tiny_model, windows

LLM = Path(__file__).resolve().parents[1] / "llm"
# the CLI's --options whose default the recipe chooses, and the settings they give
CHOSEN = {"--rank": "rank", "--positions": "positions", "--sparse-bits": "sparse_bits", "--method": "method",
          "--ratio": "ratio", "--bits": "bits", "--ratios": "ratios", "--methods": "methods"}


class _Captured(BaseException):
    pass


def _cli_config(monkeypatch, argv: list[str]) -> CompressConfig:
    """The CompressConfig ``slabopt compress`` hands to compress_checkpoint for ``argv``."""
    def capture(model, out_dir, config, **kwargs):
        raise _Captured(config)

    monkeypatch.setattr(pipeline, "compress_checkpoint", capture)
    with pytest.raises(_Captured) as got:
        cli.main(["compress", "--out", "unused", "-q", *argv])
    return got.value.args[0]


@pytest.mark.parametrize("argv, asked", [
    ([], {}),
    (["--ratio", "0.5"], dict(ratio=0.5)),
    (["--ratio", "0.8125"], dict(ratio=0.8125)),  # 3 bits on disk: the recipe of that size
    (["--ratio", "0.7"], dict(ratio=0.7)),  # 4.8 bits on disk: GPTQ's layout
    (["--bits", "2.5"], dict(bits=2.5)),
    (["--bits", "6"], dict(bits=6.0)),
    (["--pattern", "2:4"], dict(pattern="2:4")),
    (["--pattern", "global"], dict(pattern="global")),
    (["--method", "rtn"], dict(method="rtn")),
    (["--method", "wanda", "--ratio", "0.6"], dict(method="wanda", ratio=0.6)),
    (["--method", "slab", "--bits", "3"], dict(method="slab", bits=3.0)),
    (["--sparse-bits", "none", "--rank", "2"], dict(sparse_bits=None, rank=2)),
])
def test_a_python_config_is_the_command_line_s(monkeypatch, argv, asked):
    """CompressConfig(**asked) from Python is the config `slabopt compress ARGV` runs, field by field."""
    assert _cli_config(monkeypatch, argv) == CompressConfig(**asked)
    choice = recipe.recommend(**asked)
    assert choice.config == CompressConfig(**asked) and choice.why
    assert choice.by_size == (choice.config.method != (asked.get("method") or recipe.METHOD))


def test_compress_model_with_only_a_size_saves_the_command_line_s_settings(tmp_path, capsys):
    """compress_model(model, windows, out, ratio=R) writes the settings `slabopt compress --ratio R`
    writes (the recipe of 3 bits per weight here, not the slab that collapses there)."""
    code = cli.main([*quick_compress_args(tmp_path), "--ratio", "0.8125", "--out", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    man = compress_model(tiny_model(), windows(), tmp_path / "py", ratio=0.8125, max_iter=1, progress=False,
                         log=None)
    from_cli = json.loads((tmp_path / "cli" / "manifest.json").read_text())["settings"]
    names = [f.name for f in fields(CompressConfig)]
    assert {k: man["settings"].get(k) for k in names} == {k: from_cli.get(k) for k in names}
    assert man["settings"]["method"] == "slab_obs" and man["settings"]["positions"] == "rice"


def test_a_complete_config_stays_as_it_is():
    """Choosing is done once: a complete config, and replace() of one, change only what is named."""
    for asked in ({}, dict(bits=2.5), dict(ratio=0.7), dict(method="rtn"), dict(pattern="2:4")):
        cfg = CompressConfig(**asked)
        assert replace(cfg) == cfg
        chosen, _, by_size = recipe.resolve({f.name: getattr(cfg, f.name) for f in fields(cfg)})
        assert chosen == {f.name: getattr(cfg, f.name) for f in fields(cfg)} and not by_size
    slab = CompressConfig(method="slab", ratio=0.5)
    assert replace(slab, ratio=0.8125).method == "slab"  # given: kept, not the recipe of 3 bits


def test_compare_runs_every_method_at_the_papers_convention():
    """compare's baseline: positions not counted and values at full bits for a ratio; counted for a
    size in bits; a quantiser takes the largest layout that fits; codes only where S is stored."""
    slab = recipe.recommend(baseline=True, method="slab", ratio=0.5).config
    assert (slab.positions, slab.sparse_bits, slab.rank) == ("index", None, recipe.RANK)
    obs = recipe.recommend(baseline=True, method="slab_obs", bits=2.5).config
    assert (obs.positions, obs.bits, obs.ratio) == ("rice", 2.5, None)
    gptq = recipe.recommend(baseline=True, method="gptq", bits=4.0).config
    assert gptq.options == {"bits": 3, "group_size": 64} and gptq.ratio == 0.75 and gptq.bits is None
    rec = recipe.recommend(baseline=True, bits=2.5).config
    assert (rec.method, rec.rank, rec.sparse_bits, rec.positions) == ("slab_obs", 1, 3, "rice")
    assert recipe.recommend(baseline=True, method="rtn", sparse_bits=4).config.sparse_bits is None


@pytest.mark.parametrize("asked", [dict(method="rtn", sparse_bits=4), dict(positions="index", bits=3.0),
                                   dict(method="slab", l_group=4), dict(sparse_bits=4, pattern="global"),
                                   dict(method="wanda", options={"nosuch": 1}), dict(ratio=0.5, bits=3.0)])
def test_the_checks_are_the_library_s(asked):
    """A setting the library refuses is refused with the library's own message (one rule, one place)."""
    cfg = CompressConfig(**asked)
    with pytest.raises((ValueError, TypeError)) as lib:
        slabopt.layer_budget((1024, 1024), **cfg.solve_settings())
    with pytest.raises(UserError) as ours:
        cfg.check()
    assert str(ours.value) == str(lib.value)


def _states_a_value(node: ast.AST | None) -> bool:
    """Whether a default is a literal value (not None / DEFAULT / empty: "not given")."""
    try:
        value = ast.literal_eval(node) if node is not None else None
    except ValueError:
        return False  # a name or a call: DEFAULT, field(default_factory=...)
    return value not in (None, (), [])


def test_each_default_is_stated_once():
    """The rank, positions, sparse bits, method and budget defaults are llm/recipe.py's: no argparse
    default, settings field or function parameter of the command line, the pipeline or compare
    states one."""
    found = []
    for path in (LLM / "cli.py", LLM / "pipeline.py", LLM / "compare.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
                flag = ast.literal_eval(node.args[0])
                default = next((k.value for k in node.keywords if k.arg == "default"), None)
                if flag in CHOSEN and _states_a_value(default):
                    found.append(f"{path.name}: {flag} default {ast.unparse(default)}")
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") in CHOSEN.values():
                if _states_a_value(node.value):
                    found.append(f"{path.name}: field {node.target.id} = {ast.unparse(node.value)}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                named = [*args.args[len(args.args) - len(args.defaults):], *args.kwonlyargs]
                values = [*args.defaults, *args.kw_defaults]
                found += [f"{path.name}:{node.name} {a.arg}={ast.unparse(v)}"
                          for a, v in zip(named, values, strict=True)
                          if a.arg in CHOSEN.values() and _states_a_value(v)]
    assert found == []
    assert {f.name: f.default for f in fields(CompressConfig) if f.name in CHOSEN.values()} == {
        "method": None, "ratio": None, "rank": None, "positions": None, "sparse_bits": recipe.DEFAULT,
        "bits": None}
