"""Never lose or corrupt a user's data: output folders, integrity, damaged input, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from slabopt.llm import checkpoint, cli  # noqa: E402
from slabopt.llm.errors import UserError  # noqa: E402
from slabopt.llm.loading import load_compressed  # noqa: E402
from slabopt.llm.pipeline import ResumeMismatch, compress_model  # noqa: E402

from ._llm import folder_bytes, save_checkpoint, tiny_model, windows  # noqa: E402

KW = dict(method="slab", ratio=0.5, rank=1, seed=5, max_iter=2, progress=False, log=None)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def ckpt_other(tmp_path_factory):
    """Same config and tokenizer as ``ckpt``, other weights."""
    return save_checkpoint(tmp_path_factory.mktemp("ckpt_other"), seed=1)


@pytest.fixture(scope="module")
def compressed(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "out"
    assert cli.main(["compress", "--model", str(ckpt), "--calib-tokens", "32", "--seqlen", "16",
                     "--max-iter", "2", "--out", str(out)]) == 0
    return out


def _cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _one_line_error(code, err, *needles):
    assert code in (1, 2), err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]  # progress bars aside
    assert len(errors) == 1 and errors[0].startswith("slabopt: error: "), err
    assert err.rstrip().endswith(errors[0]), err
    for n in needles:
        assert n in errors[0], (n, errors[0])


def _compress_args(ckpt, out, *extra):
    return ["compress", "--model", ckpt, "--calib-tokens", "32", "--seqlen", "16", "--max-iter", "2",
            "--out", out, *extra]


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------- 1. output folders
def test_overwrite_refuses_a_folder_with_a_foreign_manifest(ckpt, tmp_path, capsys):
    proj = tmp_path / "project"
    proj.mkdir()
    (proj / "manifest.json").write_text('{"name": "my web app", "version": 3}')
    (proj / "main.py").write_text("print('precious')")
    code, _, err = _cli(_compress_args(ckpt, proj, "--overwrite"), capsys)
    _one_line_error(code, err, "not a slabopt manifest")
    assert (proj / "main.py").read_text() == "print('precious')" and (proj / "manifest.json").is_file()


def test_overwrite_never_deletes_a_regular_file(ckpt, tmp_path, capsys):
    f = tmp_path / "some_file.txt"
    f.write_text("keep me")
    code, _, err = _cli(_compress_args(ckpt, f, "--overwrite"), capsys)
    _one_line_error(code, err, "not a folder")
    assert f.read_text() == "keep me"


def test_overwrite_refuses_our_folder_with_extra_user_files(compressed, tmp_path, capsys, ckpt):
    out = _copy(compressed, tmp_path / "out")
    (out / "notes.txt").write_text("my notes")
    (out / "blocks" / "extra.bin").write_bytes(b"x")
    code, _, err = _cli(_compress_args(ckpt, out, "--overwrite"), capsys)
    _one_line_error(code, err, "did not write", "notes.txt")
    assert (out / "notes.txt").read_text() == "my notes" and (out / "blocks" / "extra.bin").exists()


def test_overwrite_refuses_the_current_directory(compressed, tmp_path, monkeypatch, ckpt, capsys):
    out = _copy(compressed, tmp_path / "here")
    monkeypatch.chdir(out / "blocks")
    code, _, err = _cli(_compress_args(ckpt, "..", "--overwrite"), capsys)
    _one_line_error(code, err, "current directory")
    monkeypatch.chdir(out)
    code, _, err = _cli(_compress_args(ckpt, ".", "--overwrite"), capsys)
    _one_line_error(code, err, "current directory")
    assert (out / "manifest.json").is_file() and (out / "rest.safetensors").is_file()


def test_overwrite_refuses_a_symlink(compressed, tmp_path, ckpt, capsys):
    link = tmp_path / "link"
    link.symlink_to(compressed, target_is_directory=True)
    code, _, err = _cli(_compress_args(ckpt, link, "--overwrite"), capsys)
    _one_line_error(code, err, "not a folder")
    assert (compressed / "manifest.json").is_file()


def test_overwrite_replaces_our_own_folder(compressed, tmp_path, ckpt, capsys):
    out = _copy(compressed, tmp_path / "out")
    before = folder_bytes(out)
    code, _, err = _cli(_compress_args(ckpt, out, "--overwrite"), capsys)
    assert code == 0, err
    assert folder_bytes(out) == before  # same settings: the same bytes again


def test_existing_empty_folder_is_used(ckpt, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    code, _, err = _cli(_compress_args(ckpt, out), capsys)
    assert code == 0, err
    assert (out / "manifest.json").is_file()


# ------------------------------------------------------------------------ 2. integrity
def test_resume_refuses_another_model_with_the_same_config(ckpt, ckpt_other, tmp_path, capsys,
                                                            monkeypatch):
    assert (ckpt / "config.json").read_bytes() == (ckpt_other / "config.json").read_bytes()
    import slabopt.llm.pipeline as comp

    real = comp.compress_model
    monkeypatch.setattr(comp, "compress_model",
                        lambda *a, **k: real(*a, **k, on_block_done=lambda b: (_ for _ in ()).throw(
                            KeyboardInterrupt)))
    out = tmp_path / "o"
    code, _, _ = _cli(_compress_args(ckpt, out), capsys)
    assert code == 130
    monkeypatch.setattr(comp, "compress_model", real)
    code, _, err = _cli(_compress_args(ckpt_other, out, "--resume"), capsys)
    _one_line_error(code, err, "another source model", "model.safetensors")


def test_resume_refuses_other_weights_in_memory(tmp_path):
    def kill(b):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_model(tiny_model(seed=0), windows(), tmp_path / "o", on_block_done=kill, **KW)
    with pytest.raises(ResumeMismatch, match="another source model"):
        compress_model(tiny_model(seed=1), windows(), tmp_path / "o", resume=True, **KW)
    with pytest.raises(ResumeMismatch, match="settings differ"):
        compress_model(tiny_model(seed=0), windows(seed=3), tmp_path / "o", resume=True, **KW)


def test_manifest_hashes_every_file(compressed):
    man = json.loads((compressed / "manifest.json").read_text())
    on_disk = {p.relative_to(compressed).as_posix() for p in compressed.rglob("*") if p.is_file()}
    assert set(man["files"]) == on_disk - {"manifest.json", "layers.log"}
    for name, digest in man["files"].items():
        assert digest == checkpoint.sha256_file(compressed / name)
    assert "model.safetensors" in man["source"]["files"] and "config.json" in man["source"]["files"]


# ------------------------------------------------------------------- 3. damaged folders
def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p: Path):
    p.write_bytes(b"")


def _flip_bytes(p: Path, count: int = 200):
    """Invert ``count`` bytes of the largest stored tensor: a valid file with other values."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
    state = load_file(str(p))
    key = max(state, key=lambda k: state[k].numel() * state[k].element_size())
    raw = state[key].clone().contiguous().reshape(-1).view(torch.uint8)
    assert raw.numel() >= count
    raw[:count] ^= 0xFF
    state[key] = raw.view(state[key].dtype).reshape(state[key].shape)
    save_file(state, str(p), metadata=meta)


DAMAGE = {
    "truncated block": ("blocks/block_001.safetensors", _truncate, "block_001.safetensors"),
    "empty block": ("blocks/block_000.safetensors", _empty, "block_000.safetensors"),
    "flipped stored bytes": ("blocks/block_000.safetensors", _flip_bytes, "block_000.safetensors"),
    "invalid manifest": ("manifest.json", lambda p: p.write_text("{not json"), "manifest.json"),
    "missing rest": ("rest.safetensors", lambda p: p.unlink(), "rest.safetensors"),
    "missing block": ("blocks/block_001.safetensors", lambda p: p.unlink(), "block_001.safetensors"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_eval_of_a_damaged_folder_names_the_file(compressed, tmp_path, capsys, case):
    name, damage, needle = DAMAGE[case]
    out = _copy(compressed, tmp_path / "out")
    damage(out / name)
    code, _, err = _cli(["eval", out, "--tokens", "32", "--seqlen", "16"], capsys)
    _one_line_error(code, err, needle)
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        load_compressed(out)


@pytest.mark.parametrize("case", ["truncated block", "empty block", "missing rest", "invalid manifest"])
def test_no_verify_still_gives_one_line(compressed, tmp_path, capsys, case):
    name, damage, needle = DAMAGE[case]
    out = _copy(compressed, tmp_path / "out")
    damage(out / name)
    code, _, err = _cli(["eval", out, "--tokens", "32", "--seqlen", "16", "--no-verify"], capsys)
    _one_line_error(code, err, needle)


def test_no_verify_loads_an_intact_folder(compressed, capsys):
    code, out, err = _cli(["eval", compressed, "--tokens", "32", "--seqlen", "16", "--json",
                           "--no-verify"], capsys)
    assert code == 0, err
    assert json.loads(out)["perplexity"] > 1


def test_resume_of_a_damaged_block_names_it(ckpt, tmp_path, capsys, monkeypatch):
    import slabopt.llm.pipeline as comp

    real = comp.compress_model

    def stop_after_block_1(*a, **k):
        def stop(b):
            if b == 1:
                raise KeyboardInterrupt
        return real(*a, **k, on_block_done=stop)

    out = tmp_path / "o"
    monkeypatch.setattr(comp, "compress_model", stop_after_block_1)
    save_checkpoint(tmp_path / "three", layers=3)
    code, _, _ = _cli(_compress_args(tmp_path / "three", out), capsys)
    assert code == 130
    monkeypatch.setattr(comp, "compress_model", real)
    _flip_bytes(out / "blocks" / "block_000.safetensors")
    code, _, err = _cli(_compress_args(tmp_path / "three", out, "--resume"), capsys)
    _one_line_error(code, err, "block_000.safetensors", "damaged")


def _model_dir(ckpt, tmp_path, damage) -> Path:
    d = _copy(ckpt, tmp_path / "model")
    damage(d)
    return d


MODEL_DAMAGE = {
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no weight files"),
    "truncated weights": (lambda d: _truncate(d / "model.safetensors"), "cannot load the weights"),
    "empty weights": (lambda d: _empty(d / "model.safetensors"), "cannot load the weights"),
    "config does not match": (
        lambda d: (d / "config.json").write_text(json.dumps(
            {**json.loads((d / "config.json").read_text()), "intermediate_size": 96})),
        "model"),
    "invalid config": (lambda d: (d / "config.json").write_text("{oops"), "config"),
}


@pytest.mark.parametrize("case", sorted(MODEL_DAMAGE))
def test_damaged_model_folder_is_one_line(ckpt, tmp_path, capsys, case):
    damage, needle = MODEL_DAMAGE[case]
    d = _model_dir(ckpt, tmp_path, damage)
    code, _, err = _cli(_compress_args(d, tmp_path / "o"), capsys)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------ 4. a kill at any instant
class _Killed(BaseException):
    pass


def _count_saves(monkeypatch) -> list:
    calls: list = []
    real = checkpoint.Checkpoint.save

    def counting(self):
        calls.append(1)
        real(self)

    monkeypatch.setattr(checkpoint.Checkpoint, "save", counting)
    return calls


def _kill_at(monkeypatch, n: int, after: bool):
    """Make the n-th manifest write (1-based) die before (or right after) it happens."""
    calls = []
    real = checkpoint.Checkpoint.save

    def dying(self):
        calls.append(1)
        if len(calls) == n and not after:
            raise _Killed
        real(self)
        if len(calls) == n and after:
            raise _Killed

    monkeypatch.setattr(checkpoint.Checkpoint, "save", dying)


def test_a_kill_at_any_manifest_write_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    kw = dict(KW, method="slab")
    calls = _count_saves(monkeypatch)
    compress_model(tiny_model(layers=3), windows(), tmp_path / "full", **kw)
    total = len(calls)
    monkeypatch.undo()
    expected = folder_bytes(tmp_path / "full")
    assert total >= 6
    for n in range(1, total + 1):
        for after in (False, True):
            out = tmp_path / f"kill{n}{after}"
            _kill_at(monkeypatch, n, after)
            with pytest.raises(_Killed):
                compress_model(tiny_model(layers=3), windows(), out, **kw)
            monkeypatch.undo()
            compress_model(tiny_model(layers=3), windows(), out, resume=True, **kw)
            assert folder_bytes(out) == expected, (n, after)


def test_a_kill_while_creating_the_folder_leaves_nothing_in_the_way(tmp_path, monkeypatch):
    real = os.rename

    def dying_rename(a, b):
        raise _Killed

    monkeypatch.setattr(checkpoint.os, "rename", dying_rename)
    with pytest.raises(_Killed):
        compress_model(tiny_model(), windows(), tmp_path / "o", **KW)
    monkeypatch.setattr(checkpoint.os, "rename", real)
    assert not (tmp_path / "o").exists()
    compress_model(tiny_model(), windows(), tmp_path / "o", **KW)  # a plain run works
    assert [p.name for p in tmp_path.iterdir()] == ["o"]  # the half-made sibling is gone


def test_a_kill_right_after_creation_is_accepted_by_resume_and_overwrite(tmp_path, monkeypatch):
    import slabopt.llm.pipeline as comp

    def dying_save_rest(*a, **k):
        raise _Killed

    for flag in ("resume", "overwrite"):
        out = tmp_path / flag
        monkeypatch.setattr(comp, "save_rest", dying_save_rest)
        with pytest.raises(_Killed):
            compress_model(tiny_model(), windows(), out, **KW)
        monkeypatch.undo()
        man = compress_model(tiny_model(), windows(), out, **{flag: True}, **KW)
        assert man["complete"]


# ------------------------------------------------------------ 5.-6. what is saved is what was solved
def test_slab_offset_saved_model_is_the_solved_one(tmp_path):
    from slabopt.llm.arch import block_linears, decoder_layers

    model = tiny_model()
    compress_model(model, windows(), tmp_path / "o", **dict(KW, method="slab_offset"))
    loaded, _man = load_compressed(tmp_path / "o")
    for block in decoder_layers(loaded):
        for mod in block_linears(block).values():
            assert mod.row_offset is not None and bool(mod.row_offset.abs().sum() > 0)
    x = windows(seed=9)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)


def test_rpca_is_refused_by_compress(ckpt, tmp_path, capsys):
    code, _, err = _cli(_compress_args(ckpt, tmp_path / "o", "--method", "rpca"), capsys)
    _one_line_error(code, err, "no fixed budget", "project=true")
    assert not (tmp_path / "o").exists()


def test_rpca_projected_stays_within_the_budget(tmp_path):
    man = compress_model(tiny_model(layers=1), windows(), tmp_path / "o",
                         **dict(KW, method="rpca", options={"project": True}))
    s = man["sizes"]
    assert s["linear_budget_ratio"] >= 0.5
    assert all(e["ratio"] >= 0.5 for e in man["layers"])


# ------------------------------------------------------------------------ 8. compare
def _compare(ckpt, work, *extra):
    return ["compare", "--model", ckpt, "--ratios", "0.5", "--methods", "wanda", "--calib-tokens",
            "32", "--seqlen", "16", "--tokens", "32", "--max-iter", "2", "--work-dir", work,
            "--no-progress", *extra]


def _untouched(folder):
    """Every file under ``folder`` (manifest and log included): its bytes and modification time,
    which a recomputation changes even where it writes the same bytes."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_compare_twice_keeps_earlier_results(ckpt, tmp_path, capsys):
    """A second compare with other settings keeps the earlier folder as it is; with the same
    settings it reuses the folder without writing any file of it; --overwrite recomputes it."""
    work = tmp_path / "w"
    code, _, err = _cli(_compare(ckpt, work), capsys)
    assert code == 0, err
    run = work / "wanda-r0.5-rank1"
    before = folder_bytes(run)
    code, so, err = _cli(_compare(ckpt, work, "--seed", "3"), capsys)  # other calibration windows
    assert code == 0, err
    assert "kept as it is" in so and folder_bytes(run) == before
    stamps = _untouched(run)
    code, so, err = _cli(_compare(ckpt, work), capsys)  # same settings: reused, not recomputed
    assert code == 0, err
    assert _untouched(run) == stamps
    code, so, err = _cli(_compare(ckpt, work, "--seed", "3", "--overwrite"), capsys)
    assert code == 0, err
    assert folder_bytes(run) != before


def test_compare_refuses_to_overwrite_foreign_result_files(ckpt, tmp_path, capsys):
    work = tmp_path / "w"
    work.mkdir()
    (work / "results.md").write_text("my own notes")
    code, _, err = _cli(_compare(ckpt, work), capsys)
    _one_line_error(code, err, "results.md")
    assert (work / "results.md").read_text() == "my own notes"
    mine = tmp_path / "figure.png"
    mine.write_bytes(b"png")
    code, _, err = _cli(_compare(ckpt, tmp_path / "w2", "--plot", mine), capsys)
    _one_line_error(code, err, "figure.png")
    assert mine.read_bytes() == b"png"


def test_every_cli_option_says_its_default():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    for name, sp in sub.choices.items():
        for act in sp._actions:
            if act.option_strings and act.nargs != 0 and act.dest != "help" and not act.required:
                assert act.help and "default" in act.help, (name, act.option_strings)


# ------------------------------------------------------------- checks before any work
@pytest.mark.parametrize("extra, needles", [
    (["--rank", "100000"], ["rank"]),
    (["--option", "no_such_option=1"], ["no_such_option", "its options are"]),
    (["--method", "wanda", "--option", "variant=paper"], ["variant", "wanda"]),
    (["--method", "slab", "--pattern", "2:4", "--ratio", "0.8", "--rank", "1"], ["2:4", "ratio 0.8"]),
    (["--method", "slab_obs", "--bits", "1.2", "--rank", "1"], ["1.2 bits per weight", "(48, 48)"]),
])
def test_bad_settings_fail_before_the_model_is_loaded_or_the_folder_made(ckpt, tmp_path, capsys, monkeypatch,
                                                                         extra, needles):
    from slabopt.llm import data

    def no_load(*_a, **_k):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(data, "_load_weights", no_load)
    out = tmp_path / "o"
    code, _, err = _cli(_compress_args(ckpt, out, *extra), capsys)
    _one_line_error(code, err, *needles)
    assert not out.exists()


def test_layer_checks_name_the_shape(tmp_path):
    with pytest.raises(UserError, match=r"q_proj \(48, 48\): rank"):
        compress_model(tiny_model(layers=1), windows(), tmp_path / "o", **{**KW, "rank": 60})
    assert not (tmp_path / "o").exists()


def test_the_corrected_command_then_runs(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, _ = _cli(_compress_args(ckpt, out, "--rank", "100000"), capsys)
    assert code != 0 and not out.exists()
    code, _, err = _cli(_compress_args(ckpt, out, "--rank", "1"), capsys)
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["complete"]
