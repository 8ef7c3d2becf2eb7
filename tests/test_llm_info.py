"""``slabopt info FOLDER``: what a folder holds, whether it is finished and intact."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from slabopt.llm import cli, pipeline  # noqa: E402

from ._llm import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _compress(ckpt, out, *extra) -> int:
    return cli.main(["compress", "--model", str(ckpt), "--calib-tokens", "32", "--seqlen", "16", "--max-iter",
                     "1", "--rank", "1", "--out", str(out), "-q", *extra])


@pytest.fixture(scope="module")
def folder(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "out"
    assert _compress(ckpt, out, "--method", "slab_obs", "--bits", "3") == 0
    return out


def _info(capsys, *argv):
    code = cli.main(["info", *map(str, argv)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_info_of_a_finished_folder(folder, ckpt, capsys):
    code, out, _ = _info(capsys, folder)
    assert code == 0
    assert "complete" in out and "slab_obs" in out and "verified" in out
    man = json.loads((folder / "manifest.json").read_text())
    weights = sum(e["shape"][0] * e["shape"][1] for e in man["layers"])
    bpw = 8 * man["sizes"]["linear_bytes_on_disk"] / weights
    assert f"{bpw:.3f} bits per weight in their files" in out
    assert str(ckpt) in out


def test_info_json_agrees_with_the_manifest(folder, capsys):
    code, out, _ = _info(capsys, folder, "--json")
    assert code == 0
    info = json.loads(out)
    man = json.loads((folder / "manifest.json").read_text())
    assert info["complete"] is True and info["verified"] is True
    assert info["settings"]["method"] == man["settings"]["method"]
    files = sum((folder / name).stat().st_size for name in man["files"])
    assert info["folder_bytes"] == files + (folder / "manifest.json").stat().st_size


def test_info_names_a_damaged_file(folder, tmp_path, capsys):
    import shutil

    copy = shutil.copytree(folder, tmp_path / "copy")
    block = copy / "blocks" / "block_001.safetensors"
    block.write_bytes(block.read_bytes()[:-3] + b"xyz")
    code, out, _ = _info(capsys, copy)
    assert code == 1
    assert "block_001.safetensors is damaged" in out


def test_info_of_an_unfinished_folder_says_where_it_stopped(ckpt, tmp_path, monkeypatch, capsys):
    original = pipeline._solve_layer

    def stop(mod, st, b, *a, **k):
        if b == 1:
            raise KeyboardInterrupt
        return original(mod, st, b, *a, **k)

    monkeypatch.setattr(pipeline, "_solve_layer", stop)
    out = tmp_path / "o"
    assert _compress(ckpt, out) == 130
    capsys.readouterr()
    code, text, _ = _info(capsys, out)
    assert code == 0
    assert "unfinished: 1 of 2 blocks done" in text and "--resume" in text


def test_info_of_a_folder_slabopt_did_not_write(tmp_path, capsys):
    code, _, err = _info(capsys, tmp_path)
    assert code == 2 and "not a slabopt output folder" in err


def test_resume_says_where_it_resumes(ckpt, tmp_path, monkeypatch, capsys):
    original = pipeline._solve_layer

    def stop(mod, st, b, *a, **k):
        if b == 1:
            raise KeyboardInterrupt
        return original(mod, st, b, *a, **k)

    out = tmp_path / "o"
    monkeypatch.setattr(pipeline, "_solve_layer", stop)
    assert cli.main(["compress", "--model", str(ckpt), "--calib-tokens", "32", "--seqlen", "16",
                     "--max-iter", "1", "--rank", "1", "--out", str(out)]) == 130
    monkeypatch.setattr(pipeline, "_solve_layer", original)
    capsys.readouterr()
    assert cli.main(["compress", "--model", str(ckpt), "--calib-tokens", "32", "--seqlen", "16",
                     "--max-iter", "1", "--rank", "1", "--out", str(out), "--resume"]) == 0
    assert f"resuming {out} at block 1 of 2" in capsys.readouterr().out
