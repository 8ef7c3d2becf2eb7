"""The output folder of ``slabopt compress``: its manifest, its files, their hashes and resume
(loading a finished folder: :mod:`.loading`).

Layout (format ``slabopt-llm/2``)::

    manifest.json                  format, settings, source-model hashes, SHA-256 of every file, log
    config.json, tokenizer files   the model's config and tokenizer (the folder loads on its own;
                                   config.json also tells transformers' from_pretrained how, see
                                   hf_integration.py)
    rest.safetensors               every weight that is not a compressed linear layer
    blocks/block_NNN.safetensors   the compressed linear layers of decoder block NNN
    resume/inputs_NNN.safetensors  (only while unfinished) the inputs of block NNN, for --resume
    layers.log                     the per-layer log, one line per layer (not hashed)

Safety rules (docs/checkpoints.md):

- A folder is recognised as ours by its manifest's ``format`` field and its file list, never by a
  file name. Only such a folder may be replaced, and only when it holds nothing the manifest does
  not list; a regular file, a symbolic link, the current directory or one of its parents is never
  deleted.
- The folder comes into existence atomically, manifest included (built beside it, then renamed), so
  a kill at any instant leaves a folder that ``--resume`` and ``--overwrite`` accept.
- A file is entered in the manifest (hash ``null`` = being written) *before* it is written, and its
  SHA-256 after; ``--resume`` and loading verify every hash and name the damaged file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .arch import set_module
from .data import sha256_file
from .errors import UserError
from .slablinear import SLaBLinear

FORMAT = "slabopt-llm/2"
MANIFEST = "manifest.json"
MANIFEST_TMP = "manifest.json.tmp"
LOG = "layers.log"
REST = "rest.safetensors"
CONFIG = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = ("special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "tokenizer.model")
_NEW_PREFIX = ".slabopt-new-"


def block_file(b: int) -> str:
    return f"blocks/block_{b:03d}.safetensors"


def resume_file(b: int) -> str:
    return f"resume/inputs_{b:03d}.safetensors"


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a temporary file beside ``path``, flushed, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=1, default=str))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


# ------------------------------------------------------------------------------------ reading
def read_manifest(folder: Path) -> dict:
    """The manifest of an output folder; ``UserError`` naming what is wrong otherwise."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a slabopt output folder (it has no {MANIFEST})")
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is damaged: not valid JSON ({exc})") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        found = man.get("format") if isinstance(man, dict) else type(man).__name__
        raise UserError(f"{path} is not a slabopt manifest of format {FORMAT!r} (found {found!r}); "
                        "slabopt only reads and replaces folders it wrote itself")
    files = man.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                              for k, v in files.items()):
        raise UserError(f"{path} is damaged: its 'files' entry is not a map of file names to hashes")
    return man


def _own_names(man: dict) -> set[str]:
    return set(man["files"]) | {MANIFEST, MANIFEST_TMP, LOG}


def unlisted_files(folder: Path, man: dict) -> list[str]:
    """Files (and links) in ``folder`` that its manifest does not list, as relative paths."""
    own = _own_names(man)
    extra = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        for d in dirs:
            if (Path(root) / d).is_symlink():
                extra.append(str(rel_root / d))
        for f in files:
            rel = (rel_root / f).as_posix()
            if rel not in own or (Path(root) / f).is_symlink():
                extra.append(rel)
    return sorted(extra)


def verify_files(folder: Path, man: dict, names: list[str] | None = None) -> None:
    """Check that each listed file (all by default) exists and has the SHA-256 the manifest records."""
    files = man["files"]
    for name in sorted(files) if names is None else names:
        path = Path(folder) / name
        expected = files.get(name)
        if expected is None:
            raise UserError(f"{path} was being written when the run stopped; resume or recompress")
        if not path.is_file():
            raise UserError(f"{path} is missing (the manifest lists it); the folder is damaged")
        if sha256_file(path) != expected:
            raise UserError(f"{path} is damaged: its SHA-256 differs from the one in {MANIFEST} "
                            "(recompress, or load with --no-verify at your own risk)")


# ------------------------------------------------------------------------------- the folder
def _protected(folder: Path) -> str | None:
    """Why ``folder`` must never be deleted, or ``None``."""
    if folder.is_symlink():
        return "it is a symbolic link"
    real = folder.resolve()
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        return "it is the current directory or one of its parents"
    if real == Path.home().resolve() or real == Path(real.anchor):
        return "it is the home or root directory"
    return None


def _stale_new_folders(out: Path) -> list[Path]:
    return [p for p in out.parent.glob(f".{out.name}{_NEW_PREFIX}*") if p.is_dir() and not p.is_symlink()]


def _remove_stale_new_folders(out: Path) -> None:
    """Remove half-created siblings of ``out`` left by a kill during :func:`create_folder`."""
    for p in _stale_new_folders(out):
        entries = list(p.iterdir())
        if not entries:
            p.rmdir()
        elif [e.name for e in entries] in ([MANIFEST], [MANIFEST_TMP]):
            try:
                ok = entries[0].name == MANIFEST_TMP or read_manifest(p)["files"] == {}
            except UserError:
                ok = False
            if ok:
                entries[0].unlink()
                p.rmdir()


def check_output(out: Path, *, resume: bool, overwrite: bool) -> str:
    """Decide what to do with the output folder without touching it: "new", "resume" or "overwrite".

    Raises ``UserError`` when the folder may not be used as asked (see the module docstring).
    """
    out = Path(out)
    if resume and overwrite:
        raise UserError("give at most one of --resume and --overwrite")
    if not out.exists() and not out.is_symlink():
        return "new"
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; slabopt writes a folder there and never "
                        "replaces a file: choose another --out")
    if not any(out.iterdir()):
        return "new"
    if not (out / MANIFEST).is_file():
        raise _foreign_folder(out, resume, overwrite)
    man = read_manifest(out)
    if not resume and not overwrite:
        raise UserError(f"output folder {out} already exists; pass --resume to continue it or "
                        "--overwrite to replace it")
    if overwrite:
        _check_replaceable(out, unlisted_files(out, man))
        return "overwrite"
    return "resume"


def _foreign_folder(out: Path, resume: bool, overwrite: bool) -> UserError:
    """The error for a non-empty folder without a manifest (slabopt neither resumes nor deletes it)."""
    if resume:
        return UserError(f"cannot resume {out}: it has no {MANIFEST} (not a slabopt output folder)")
    if overwrite:
        return UserError(f"{out} is not a slabopt output folder (no {MANIFEST}); refusing to "
                         "delete it: choose another --out")
    return UserError(f"output folder {out} already exists and is not a slabopt output folder; "
                     "choose another --out")


def _check_replaceable(out: Path, extra: list[str]) -> None:
    """``UserError`` unless slabopt may replace its folder ``out`` (not protected, no files of the user's)."""
    reason = _protected(out)
    if reason:
        raise UserError(f"refusing to replace {out}: {reason}")
    if extra:
        raise UserError(f"refusing to replace {out}: it holds files slabopt did not write "
                        f"({', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''})")


def clear_folder(out: Path) -> None:
    """Delete what the manifest of ``out`` lists (after :func:`check_output` said "overwrite").

    The manifest goes last, so a kill in between leaves a folder that is still recognised as ours.
    Empty sub-folders are removed; ``out`` itself stays, empty.
    """
    man = read_manifest(out)
    if unlisted_files(out, man) or _protected(out):  # re-checked right before deleting
        raise UserError(f"refusing to replace {out}: it changed since it was checked")
    for name in [*sorted(man["files"]), LOG, MANIFEST_TMP]:
        (out / name).unlink(missing_ok=True)
    for root, _dirs, _files in sorted(os.walk(out), key=lambda t: -len(t[0])):
        if Path(root) != out and not any(Path(root).iterdir()):
            Path(root).rmdir()
    (out / MANIFEST).unlink()


def create_folder(out: Path, manifest: dict) -> None:
    """Create ``out`` holding only ``manifest`` in one atomic step (build beside it, rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_new_folders(out)
    tmp = out.parent / f".{out.name}{_NEW_PREFIX}{os.getpid()}"
    tmp.mkdir()
    _write_json(tmp / MANIFEST, manifest)
    try:
        os.rename(tmp, out)  # atomic; replaces an empty folder, fails on a non-empty one
    except OSError as exc:
        shutil.rmtree(tmp)
        raise UserError(f"cannot create {out}: {exc.strerror}") from None


class Checkpoint:
    """An output folder being written: the manifest in memory and on disk, and the files it lists."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest

    @property
    def files(self) -> dict[str, str | None]:
        return self.manifest["files"]

    def save(self) -> None:
        _write_json(self.folder / MANIFEST, self.manifest)

    def announce(self, *names: str) -> None:
        """Enter ``names`` as being written (hash ``null``) before writing them."""
        for name in names:
            self.files[name] = None
        self.save()

    def path(self, name: str) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, name: str) -> None:
        """Record the SHA-256 of the written file ``name`` (saved with the next :meth:`save`)."""
        self.files[name] = sha256_file(self.folder / name)

    def remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)
        self.files.pop(name, None)

    def drop_unfinished(self) -> None:
        """Delete the files a killed run was writing (hash ``null``) and forget them."""
        for name in [n for n, h in self.files.items() if h is None]:
            self.remove(name)
        self.save()

    def log(self, line: str) -> None:
        with open(self.folder / LOG, "a", encoding="utf-8") as f:
            f.write(line + "\n")


# ----------------------------------------------------------------------------- source model
_SOURCE_HASHES: dict[tuple, str] = {}  # (path, size, mtime_ns) → SHA-256: compare hashes a model once


def _source_file_hash(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SOURCE_HASHES:
        _SOURCE_HASHES[key] = sha256_file(path)
    return _SOURCE_HASHES[key]


def source_fingerprint(source_dir: Path | None, state: dict | None = None) -> dict[str, str]:
    """SHA-256 of the source model: its config and every weight file, or of its tensors in memory.

    With a checkpoint folder the hashes are per file (so a mismatch names the file); for a model
    given only in memory, one hash over every tensor's name, dtype, shape and bytes.
    """
    if source_dir is not None:
        src = Path(source_dir)
        names = sorted(p.name for p in src.iterdir() if p.is_file() and
                       (p.name == CONFIG or p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json")))
        return {name: _source_file_hash(src / name) for name in names}
    h = hashlib.sha256()
    for name in sorted(state or {}):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"tensors in memory": h.hexdigest()}


def fingerprint_difference(old: dict, new: dict) -> str:
    """Which source files differ between two fingerprints, in words."""
    parts = []
    for name in sorted(set(old) | set(new)):
        if name not in new:
            parts.append(f"{name} is gone")
        elif name not in old:
            parts.append(f"{name} is new")
        elif old[name] != new[name]:
            parts.append(f"{name} has other contents")
    return "; ".join(parts)


# ---------------------------------------------------------------------------- tensor files
def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; ``UserError`` naming the file when it is damaged."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the folder is incomplete") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged: not a readable safetensors file ({exc})") from None


def save_block(ck: Checkpoint, b: int, block: nn.Module) -> None:
    """Write the compressed linear layers of block ``b`` (their buffers; no times, no log)."""
    lin = {n: m for n, m in block.named_modules() if isinstance(m, SLaBLinear)}
    tensors = {f"{name}.{k}": v.detach().to("cpu").contiguous() for name, mod in lin.items()
               for k, v in mod.state_dict().items()}
    # one metadata key: safetensors writes several keys in a random order, and the bytes must repeat
    shapes = {n: [m.out_features, m.in_features] for n, m in lin.items()}
    meta = {"slabopt": json.dumps({"block": b, "shapes": shapes})}
    save_file(tensors, str(ck.path(block_file(b))), metadata=meta)


def load_block(block: nn.Module, folder: Path, b: int, dtype: torch.dtype) -> None:
    """Put the saved compressed layers of block ``b`` into ``block``."""
    path = Path(folder) / block_file(b)
    state, meta = read_tensors(path)
    try:
        shapes = json.loads(meta["slabopt"])["shapes"]
        for name, shape in shapes.items():
            sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            set_module(block, name, SLaBLinear.empty_like_state(sub, tuple(shape), compute_dtype=dtype))
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"{path} is damaged: its layers do not match its metadata ({exc})") from None


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers outside the state dict (rotary ``inv_freq`` tables and the like), by full name."""
    persistent = set(model.state_dict())
    return {n: b for n, b in model.named_buffers() if n not in persistent}


def source_dtype(source_dir: Path | None) -> str | None:
    """The dtype a checkpoint folder declares for its weights (config.json ``dtype`` or
    ``torch_dtype``: "bfloat16", "float16", "float32"), ``None`` when it declares none."""
    if source_dir is None or not (Path(source_dir) / CONFIG).is_file():
        return None
    config = json.loads((Path(source_dir) / CONFIG).read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    return name if name in ("bfloat16", "float16", "float32") else None


def rest_state(model: nn.Module, compressed: set[str], dtype: str | None = None) -> dict[str, torch.Tensor]:
    """Every weight that is not a compressed linear layer (nor a tied head), on the CPU, its
    floating-point ones in ``dtype`` (``None``: as in memory), non-persistent buffers included as
    they are (so that every architecture's rotary tables load as they were)."""
    skip = tuple(name + "." for name in compressed)
    tied = getattr(model.config, "tie_word_embeddings", False)
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(skip) and not (tied and k == "lm_head.weight")}
    if dtype is not None:
        state = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in state.items()}
    state.update(_non_persistent_buffers(model))
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _tokenizer_files(source_dir: Path | None) -> list[str]:
    if source_dir is None:
        return []
    return sorted(f.name for f in Path(source_dir).iterdir()
                  if f.is_file() and (f.name.startswith("tokenizer") or f.name in TOKENIZER_FILES))


def save_rest(ck: Checkpoint, model: nn.Module, source_dir: Path | None, compressed: set[str],
              dtype: str | None = None) -> list[str]:
    """:func:`rest_state` into ``rest.safetensors``, the config and the tokenizer files."""
    state = rest_state(model, compressed, dtype)
    names, tok = [REST, CONFIG], _tokenizer_files(source_dir)
    ck.announce(*names, *tok)
    save_file(state, str(ck.path(REST)), metadata={"format": "pt"})
    ck.path(CONFIG).write_text(config_json(json.loads(model.config.to_json_string(use_diff=True))),
                               encoding="utf-8")
    for name in tok:
        shutil.copyfile(Path(source_dir) / name, ck.path(name))
    for name in names + tok:
        ck.record(name)
    ck.save()
    return names + tok


def size_report(folder: Path, layer_log: list, value_bits: int | None = None) -> dict:
    """Real bytes on disk of the compressed linear layers, and their budget, against the same layers
    dense at their value bits: b·m·n bits each, the budget's dense bits (``value_bits``, default
    the folder's manifest's setting). ``linear_dense16_bytes`` is the 16-bit dense size, for tables
    across value bits."""
    if value_bits is None:
        value_bits = read_manifest(folder)["settings"]["value_bits"]
    files = sorted((Path(folder) / "blocks").glob("block_*.safetensors"))
    disk = sum(f.stat().st_size for f in files)
    weights = sum(e["shape"][0] * e["shape"][1] for e in layer_log)
    dense_bits = value_bits * weights
    budget_bits = sum(e["bits"] for e in layer_log)
    rest = Path(folder) / REST
    return {"linear_bytes_on_disk": disk, "linear_dense_bytes": dense_bits // 8,
            "linear_dense16_bytes": 2 * weights,
            "linear_disk_ratio": 1 - 8 * disk / dense_bits if dense_bits else 0.0,
            "linear_budget_bytes": budget_bits / 8,
            "linear_budget_ratio": 1 - budget_bits / dense_bits if dense_bits else 0.0,
            "rest_bytes_on_disk": rest.stat().st_size if rest.exists() else 0}


# ---------------------------------------------------------------- transformers' from_pretrained
QUANT_METHOD = "slabopt"


def transformers_entries() -> dict[str, Any]:
    """The entries of an output folder's config.json through which transformers' ``from_pretrained``
    loads it after ``import slabopt.llm`` (:mod:`.hf_integration`): the quantization method and the
    folder's format, and ``rest.safetensors`` as the one weight file transformers reads itself."""
    return {"quantization_config": {"quant_method": QUANT_METHOD, "format": FORMAT},
            "transformers_weights": REST}


def config_json(config: dict[str, Any]) -> str:
    """config.json of an output folder: ``config`` (a model config as a dict) with
    :func:`transformers_entries`, laid out as transformers writes its configs."""
    return json.dumps({**config, **transformers_entries()}, indent=2, sort_keys=True) + "\n"
