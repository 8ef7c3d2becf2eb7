"""The table of damaged-input cases in docs/checkpoints.md: what the CLI says for each.

    python -m benchmarks.damaged_inputs > /tmp/table.md

Builds a tiny offline Llama checkpoint, compresses it, damages copies of the folders one way each,
runs the command a user would run and prints the exit status and the error line as Markdown.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from slabopt.llm import cli

from tests._llm import save_checkpoint


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path, count: int = 200) -> None:
    """Invert ``count`` bytes of the largest stored tensor (a valid file with other values)."""
    with safe_open(str(p), "pt") as f:
        meta = f.metadata()
    state = load_file(str(p))
    key = max(state, key=lambda k: state[k].numel() * state[k].element_size())
    raw = state[key].clone().contiguous().reshape(-1).view(torch.uint8)
    raw[:count] ^= 0xFF
    state[key] = raw.view(state[key].dtype).reshape(state[key].shape)
    save_file(state, str(p), metadata=meta)


def _mismatch(d: Path) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))


FOLDER_CASES = [  # (case, file in the compressed folder, damage, extra eval flags)
    ("truncated block file", "blocks/block_001.safetensors", _truncate, []),
    ("truncated block file, --no-verify", "blocks/block_001.safetensors", _truncate, ["--no-verify"]),
    ("empty block file", "blocks/block_000.safetensors", lambda p: p.write_bytes(b""), []),
    ("200 flipped bytes in a block", "blocks/block_000.safetensors", _flip, []),
    ("invalid manifest.json", "manifest.json", lambda p: p.write_text("{not json"), []),
    ("manifest.json of another program", "manifest.json", lambda p: p.write_text('{"name": "app"}'), []),
    ("missing rest.safetensors", "rest.safetensors", lambda p: p.unlink(), []),
    ("missing rest.safetensors, --no-verify", "rest.safetensors", lambda p: p.unlink(), ["--no-verify"]),
]
MODEL_CASES = [  # (case, damage of the --model folder)
    ("--model folder without weight files", lambda d: (d / "model.safetensors").unlink()),
    ("--model folder with truncated weights", lambda d: _truncate(d / "model.safetensors")),
    ("--model config that does not match its weights", _mismatch),
    ("--model config that is not JSON", lambda d: (d / "config.json").write_text("{oops")),
]


def _run(argv: list, root: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([str(a) for a in argv])
    line = next((ln for ln in err.getvalue().splitlines() if ln.startswith("slabopt: error")), "")
    return code, line.replace(str(root), "…")


def _compress(model: Path, out: Path, *extra) -> list:
    return ["compress", "--model", model, "--calib-tokens", "32", "--seqlen", "16", "--max-iter", "2",
            "--out", out, *extra]


def table() -> str:
    root = Path(tempfile.mkdtemp())
    model = save_checkpoint(root / "model")
    good = root / "good"
    assert _run(_compress(model, good), root)[0] == 0
    rows = ["| case | command | exit | message |", "|---|---|---|---|"]
    for i, (case, name, damage, flags) in enumerate(FOLDER_CASES):
        d = shutil.copytree(good, root / f"f{i}")
        damage(d / name)
        code, line = _run(["eval", d, "--tokens", "32", "--seqlen", "16", *flags], root)
        rows.append(f"| {case} | `slabopt eval DIR {' '.join(flags)}` | {code} | `{line}` |")
    for i, (case, damage) in enumerate(MODEL_CASES):
        d = shutil.copytree(model, root / f"m{i}")
        damage(d)
        code, line = _run(_compress(d, root / f"o{i}"), root)
        rows.append(f"| {case} | `slabopt compress --model DIR` | {code} | `{line}` |")
    shutil.rmtree(root)
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
