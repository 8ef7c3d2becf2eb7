"""The user's own text: --calib-file for compress, --eval-file for eval, clear errors."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from slabopt.llm import cli  # noqa: E402
from slabopt.llm.data import calibration_windows, read_text_file  # noqa: E402
from slabopt.llm.errors import UserError  # noqa: E402

from ._llm import save_checkpoint  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_txt_and_jsonl_are_read_the_same_way(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "first doc"}\n\n{"text": " second doc ", "id": 2}\n',
                                      encoding="utf-8")
    assert read_text_file(tmp_path / "a.txt") == read_text_file(tmp_path / "a.jsonl") == \
        "first doc\n\nsecond doc"


BAD = {
    "missing": (None, "does not exist"),
    "empty.txt": (b"", "holds no text"),
    "blank.jsonl": (b"\n\n", "holds no text"),
    "latin1.txt": ("café".encode("latin-1"), "not valid UTF-8"),
    "notext.jsonl": (b'{"text": "ok"}\n{"body": "x"}\n', "line 2 has no \"text\""),
    "broken.jsonl": (b'{"text": "ok"}\n{oops\n', "line 2 is not valid JSON"),
    "data.csv": (b"a,b\n", "allowed: .txt"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_text_files_are_one_line_errors(tmp_path, name, ckpt, capsys):
    content, needle = BAD[name]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=needle):
        read_text_file(path)
    code, _, err = _cli(["compress", "--model", ckpt, "--calib-file", path, "--out", tmp_path / "o"], capsys)
    assert code == 2 and needle.split()[0] in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    code, _, err = _cli(["eval", "dense", "--model", ckpt, "--eval-file", path], capsys)
    assert code == 2 and "Traceback" not in err


def test_too_few_tokens_says_how_many_windows_there_are(tmp_path, ckpt, capsys):
    (tmp_path / "short.txt").write_text("x" * 100, encoding="utf-8")  # 100 tokens at one per char
    code, _, err = _cli(["compress", "--model", ckpt, "--calib-file", tmp_path / "short.txt", "--seqlen",
                         "16", "--calib-tokens", "256", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "100 tokens" in err and "holds 6 such windows" in err
    with pytest.raises(UserError, match="fewer than the 2 windows"):
        calibration_windows(torch.arange(20), 32, 16, seed=0)


def test_calib_file_and_eval_file_reach_the_pipeline(tmp_path, ckpt, capsys):
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": TEXT[i:]}) for i in range(3)),
                                      encoding="utf-8")
    (tmp_path / "e.txt").write_text(TEXT, encoding="utf-8")
    out = tmp_path / "o"
    code, so, err = _cli(["compress", "--model", ckpt, "--calib-file", tmp_path / "c.jsonl", "--calib-tokens",
                          "64", "--seqlen", "16", "--max-iter", "2", "--out", out], capsys)
    assert code == 0, err
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["text"].startswith("file c.jsonl (sha256 ") and "c.jsonl" in so
    code, so, err = _cli(["eval", out, "--eval-file", tmp_path / "e.txt", "--tokens", "64", "--seqlen", "16",
                          "--json"], capsys)
    assert code == 0, err
    res = json.loads(so)
    assert res["text"].startswith("file e.txt") and res["windows"] == 4
    code, so2, err = _cli(["eval", out, "--tokens", "64", "--seqlen", "16", "--json"], capsys)
    assert json.loads(so2)["perplexity"] != res["perplexity"]  # another text, another number
