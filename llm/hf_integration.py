"""slabopt's format in transformers: ``AutoModelForCausalLM.from_pretrained(folder)``, after
``import slabopt.llm``.

slabopt registers itself the way GPTQ, AWQ, HQQ and compressed-tensors do, through
``transformers.quantizers.register_quantization_config("slabopt")`` (:class:`SlaboptConfig`) and
``register_quantizer("slabopt")`` (:class:`SlaboptHfQuantizer`). ``import slabopt.llm`` does it as soon
as transformers' model code is imported (``llm/__init__.py``; ``slabopt --version`` does not pay for
importing transformers), or :func:`register` at once.

A folder's ``config.json`` carries (:func:`.checkpoint.transformers_entries`, written by
``slabopt compress``; :func:`add_transformers_config` adds it to a folder written before)::

    "quantization_config": {"quant_method": "slabopt", "format": "slabopt-llm/2"},
    "transformers_weights": "rest.safetensors"

Why the quantizer loads the packed layers itself (option "b") instead of letting transformers fill
``SLaBLinear`` shells from a state dict (option "a"): a folder written by ``slabopt compress`` keeps
each decoder block's layers in its own file under names relative to the block
(``blocks/block_NNN.safetensors`` holds ``self_attn.q_proj.values`` for every N), and transformers
merges the keys of all its weight files into one dict, so the blocks would overwrite each other; and
the layer layout (bit widths, N:M, two-level codes, ...) lives in the values of small tensors, not in
the shapes. So transformers reads ``rest.safetensors`` (named by ``transformers_weights``, which
transformers reads from config.json) for every weight that is not a compressed layer, and the
quantizer

- before the weights are loaded (:meth:`SlaboptHfQuantizer._process_model_before_weight_loading`)
  checks the folder (manifest, every file's SHA-256, as :func:`.loading.load_compressed` does) and
  puts a :class:`PendingLayer` without tensors in place of each compressed ``nn.Linear``: nothing of
  the dense layers is allocated or initialised, and transformers reports no missing weight;
- after (:meth:`SlaboptHfQuantizer._process_model_after_weight_loading`) puts the packed
  ``SLaBLinear`` layers in with slabopt's own reader (:func:`.checkpoint.load_block`), the saved
  non-persistent buffers (rotary tables) back, and prepares the fused forward: the model computes
  exactly what ``slabopt.llm.load`` gives.

``model.save_pretrained(out)`` works: it writes the model's state dict as transformers always does
(the ``SLaBLinear`` buffers under their full names, in ``model*.safetensors``) and a
``quantization_config`` of format ``slabopt-hf/1`` listing the compressed layers and their shapes;
``from_pretrained`` reads such a folder the same way, the packed layers from those files. (It is not
a folder ``slabopt.llm.load`` reads: that one is written by ``slabopt compress`` only.)
``model.dequantize()`` replaces the packed layers by dense ``nn.Linear`` ones.

Tested with transformers 5.x (the hooks' names and arguments, ``transformers_weights``, the
``checkpoint_files`` argument of the before-loading hook); a folder in a Hub repository is not
supported (the block files are not downloaded), nor a ``device_map`` over several devices or disk.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from .arch import block_prefix, decoder_layers, set_module
from .checkpoint import (
    CONFIG,
    FORMAT,
    MANIFEST,
    QUANT_METHOD,
    REST,
    _write_json,
    block_file,
    config_json,
    load_block,
    read_manifest,
    transformers_entries,
    verify_files,
)
from .data import sha256_file
from .errors import UserError
from .heap import release_freed_memory
from .loading import _assign_buffers, prepare_layers
from .slablinear import SLaBLinear

HF_FORMAT = "slabopt-hf/1"  # written by save_pretrained: the packed layers' buffers under their full names
__all__ = ["HF_FORMAT", "PendingLayer", "SlaboptConfig", "SlaboptHfQuantizer", "add_transformers_config",
           "attach_quantizer", "register"]


class SlaboptConfig(QuantizationConfigMixin):
    """``quantization_config`` of a slabopt model: ``format`` ``"slabopt-llm/2"`` (a folder written
    by ``slabopt compress``: manifest, ``blocks/``, ``rest.safetensors``) or ``"slabopt-hf/1"``
    (written by ``save_pretrained``, with ``modules``: full name → [out_features, in_features] of
    each compressed layer)."""

    def __init__(self, format: str = FORMAT, modules: dict[str, list[int]] | None = None, **kwargs: Any):
        self.quant_method = QUANT_METHOD
        self.format = format
        self.modules = modules
        if format not in (FORMAT, HF_FORMAT):
            raise ValueError(f"slabopt cannot read quantization_config format {format!r} (it reads "
                             f"{FORMAT!r} and {HF_FORMAT!r}); update slabopt")
        if format == HF_FORMAT and not isinstance(modules, dict):
            raise ValueError(f"a slabopt quantization_config of format {HF_FORMAT!r} lists its 'modules'")

    def to_dict(self) -> dict[str, Any]:
        """The entries of config.json (``modules`` only when there are some)."""
        out = {"quant_method": self.quant_method, "format": self.format}
        return out if self.modules is None else {**out, "modules": dict(self.modules)}


class PendingLayer(nn.Module):
    """Stands for a compressed layer while transformers loads the other weights: no tensors, so
    nothing is allocated, initialised or reported missing; replaced by its ``SLaBLinear`` after."""

    def __init__(self, out_features: int, in_features: int):
        super().__init__()
        self.out_features, self.in_features = out_features, in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this slabopt layer was never loaded (from_pretrained stopped half-way)")


class SlaboptHfQuantizer(HfQuantizer):
    """Loads a slabopt model in ``from_pretrained`` (see the module docstring)."""

    requires_calibration = True  # only pre-compressed folders: slabopt does not compress on the fly
    quantization_config: SlaboptConfig

    def __init__(self, quantization_config: SlaboptConfig, **kwargs: Any):
        super().__init__(quantization_config, **kwargs)
        self.folder: Path | None = None
        self.files: list[str] = []
        self.layers: dict[str, tuple[int, int]] = {}  # full name → (out, in) of each packed layer

    def validate_environment(self, *args: Any, device_map: Any = None, **kwargs: Any) -> None:
        """Refuse a ``device_map`` over several devices or onto disk (the packed layers are put in after
        transformers dispatched the model, next to their block's weights)."""
        places = set(device_map.values()) if isinstance(device_map, dict) else set()
        if len(places) > 1 or "disk" in places or device_map in ("auto", "balanced", "sequential"):
            raise ValueError("a slabopt model loads onto one device: pass device_map=None, 'cpu' or "
                             "'cuda' (not 'auto' or a map over several devices)")

    def _process_model_before_weight_loading(self, model: PreTrainedModel, checkpoint_files=None,
                                             **kwargs: Any) -> None:
        """Check the folder and put a :class:`PendingLayer` in place of every compressed layer."""
        if not checkpoint_files:
            raise ValueError("this transformers version does not tell the quantizer which files it "
                             "loads; load the folder with slabopt.llm.load")
        self.files = [str(f) for f in checkpoint_files]
        if self.quantization_config.format == FORMAT:
            self.folder = Path(self.files[0]).parent
            self.layers = _folder_layers(model, self.folder)
        else:
            self.layers = {n: (int(s[0]), int(s[1])) for n, s in self.quantization_config.modules.items()}
        for name, (m, n) in self.layers.items():
            set_module(model, name, PendingLayer(m, n))
        persistent = set(model.state_dict())
        skip = ["^" + re.escape(n) + r"\." for n in self.layers]  # HF_FORMAT: the layers' buffers, read after
        skip += ["^" + re.escape(n) + "$" for n, _ in model.named_buffers() if n not in persistent]
        model._keys_to_ignore_on_load_unexpected = {*(model._keys_to_ignore_on_load_unexpected or ()), *skip}

    def _process_model_after_weight_loading(self, model: PreTrainedModel, **kwargs: Any) -> PreTrainedModel:
        """Put the packed layers in (and, from a slabopt folder, the saved non-persistent buffers),
        each next to its block's weights, and prepare the fused forward."""
        dtype = model.dtype
        if self.quantization_config.format == FORMAT:
            for b, block in enumerate(decoder_layers(model)):
                load_block(block, self.folder, b, dtype)
            persistent = set(model.state_dict())
            where = {n: b.device for n, b in model.named_buffers() if n not in persistent}
            saved = _read_some(self.folder / REST, set(where))
            _assign_buffers(model, {n: t.to(where[n]) for n, t in saved.items()})
        else:
            for name, layer in _layers_from_files(self.files, self.layers, dtype).items():
                set_module(model, name, layer)
        for name, mod in model.named_modules():
            if isinstance(mod, PendingLayer):
                raise UserError(f"{name} is compressed but the folder holds no packed layer for it")
            if isinstance(mod, SLaBLinear):
                mod.to(_device_near(model, name))  # in place
        prepare_layers(model, fused=True)
        release_freed_memory()
        return model

    def get_state_dict_and_metadata(self, model: PreTrainedModel) -> tuple[None, dict]:
        """For ``save_pretrained``: the model's own state dict, and a ``quantization_config`` of
        format ``slabopt-hf/1`` listing the packed layers (set on the model's config, which is saved
        after)."""
        layers = {n: [m.out_features, m.in_features] for n, m in model.named_modules()
                  if isinstance(m, SLaBLinear)}
        self.quantization_config = SlaboptConfig(format=HF_FORMAT, modules=layers)
        model.config.quantization_config = self.quantization_config
        return None, {}

    def _dequantize(self, model: PreTrainedModel, dtype: torch.dtype | None = None) -> PreTrainedModel:
        """Every packed layer as a dense ``nn.Linear`` of its Ŵ (in ``dtype``, default the model's)."""
        dtype = dtype or model.dtype
        for name, mod in list(model.named_modules()):
            if isinstance(mod, SLaBLinear):
                lin = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None,
                                device=mod.values.device, dtype=dtype)
                lin.weight.data = mod.reconstruct(dtype)
                if mod.bias is not None:
                    lin.bias.data = mod.bias.to(dtype)
                set_module(model, name, lin)
        return model

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def attach_quantizer(model: PreTrainedModel) -> None:
    """Give a model ``slabopt.llm.load`` built the quantizer ``from_pretrained`` would have given it,
    so that ``model.save_pretrained`` writes the ``slabopt-hf/1`` format (never a plain config whose
    reload would put random dense layers where the packed ones were)."""
    layers = {n: [m.out_features, m.in_features] for n, m in model.named_modules()
              if isinstance(m, SLaBLinear)}
    config = SlaboptConfig(format=HF_FORMAT, modules=layers)
    model.hf_quantizer = SlaboptHfQuantizer(config)
    model.config.quantization_config = config


# ------------------------------------------------------------------------------------ reading
def _folder_layers(model: nn.Module, folder: Path) -> dict[str, tuple[int, int]]:
    """Full name → (out, in) of every packed layer of a folder written by ``slabopt compress``, from
    its block files' metadata, after the checks :func:`.loading.load_compressed` makes."""
    man = read_manifest(folder)
    if not man.get("complete"):
        raise UserError(f"{folder} is unfinished (next block {man.get('next_block')}); "
                        "finish it with `slabopt compress ... --resume`")
    verify_files(folder, man)
    layers = decoder_layers(model)
    if len(layers) != man.get("num_blocks"):
        raise UserError(f"{folder / MANIFEST} lists {man.get('num_blocks')} blocks but the config has "
                        f"{len(layers)}")
    out = {}
    for b in range(len(layers)):
        prefix = block_prefix(model, b)
        path = folder / block_file(b)
        try:
            with safe_open(str(path), "pt") as f:
                shapes = json.loads((f.metadata() or {})["slabopt"])["shapes"]
            out.update({prefix + name: (int(s[0]), int(s[1])) for name, s in shapes.items()})
        except (SafetensorError, OSError, KeyError, ValueError, TypeError, IndexError) as exc:
            raise UserError(f"{path} is damaged: its metadata does not list its layers ({exc})") from None
    return out


def _read_some(path: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path`` whose names are in ``names`` (the rest unread)."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k in names}


def _layers_from_files(files: list[str], layers: dict[str, tuple[int, int]],
                       dtype: torch.dtype) -> dict[str, SLaBLinear]:
    """The packed layers saved by ``save_pretrained``: their buffers, found under their full names in
    ``files``, each set rebuilt by :meth:`SLaBLinear.empty_like_state`."""
    states: dict[str, dict[str, torch.Tensor]] = {name: {} for name in layers}
    for file in files:
        with safe_open(file, "pt") as f:
            for key in f.keys():
                parts = key.split(".")
                owner = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)
                              if ".".join(parts[:i]) in states), None)
                if owner is not None:
                    states[owner][key[len(owner) + 1:]] = f.get_tensor(key)
    out = {}
    for name, state in states.items():
        try:
            out[name] = SLaBLinear.empty_like_state(state, layers[name], compute_dtype=dtype)
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise UserError(f"the saved tensors of {name} do not make a slabopt layer ({exc!r})") from None
    return out


def _device_near(model: nn.Module, name: str) -> torch.device:
    """The device of the first weight of the module holding ``name`` (or of an ancestor's)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        for p in model.get_submodule(".".join(parts[:i])).parameters():
            if not p.is_meta:
                return p.device
    return torch.device("cpu")


# ------------------------------------------------------------------------- folders from before
def add_transformers_config(folder: str | Path) -> Path:
    """Add the entries transformers' ``from_pretrained`` needs (:func:`.checkpoint.transformers_entries`)
    to ``config.json`` of a complete folder written by ``slabopt compress`` before they were written,
    and its new SHA-256 to the manifest; nothing else changes. Returns the config's path.

    The folder must be one slabopt wrote, with its config.json intact (hash checked first). The new
    config is written beside it, entered in the manifest, then renamed over it; a run killed between
    the two is finished by calling this again.
    """
    folder = Path(folder)
    man = read_manifest(folder)
    if not man.get("complete"):
        raise UserError(f"{folder} is unfinished; finish it with `slabopt compress ... --resume` first")
    path, tmp = folder / CONFIG, folder / (CONFIG + ".slabopt-new")
    if tmp.is_file() and not tmp.is_symlink() and sha256_file(tmp) == man["files"].get(CONFIG):
        tmp.replace(path)  # a run killed after recording the new config: finish it
    verify_files(folder, man, [CONFIG])
    config = json.loads(path.read_text(encoding="utf-8"))
    if all(config.get(k) == v for k, v in transformers_entries().items()):
        return path
    text = config_json(config)
    if tmp.exists() or tmp.is_symlink():  # ours only when it holds what we would write (a killed run)
        if tmp.is_symlink() or not tmp.is_file() or tmp.read_bytes() != text.encode():
            raise UserError(f"{tmp} exists and slabopt did not write it; move it away first")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    man["files"][CONFIG] = sha256_file(tmp)
    _write_json(folder / MANIFEST, man)
    tmp.replace(path)
    return path


def legacy_hint(name_or_path: Any) -> str | None:
    """The one-line advice for a folder written by ``slabopt compress`` without the config entries
    ``from_pretrained`` needs, or ``None`` when ``name_or_path`` is no such folder."""
    folder = Path(str(name_or_path))
    try:
        if read_manifest(folder) and "quantization_config" in json.loads((folder / CONFIG).read_text()):
            return None
    except (UserError, OSError, ValueError, TypeError):
        return None
    call = f"import slabopt.llm; slabopt.llm.add_transformers_config('{folder}')"
    return (f"{folder} was written by slabopt before its config.json told transformers how to load it; "
            f"add that with `python -c \"{call}\"` (changes config.json and the manifest only), "
            "or load it with slabopt.llm.load")


def _with_legacy_hint(from_pretrained: Any) -> Any:
    """``PreTrainedModel.from_pretrained`` raising :func:`legacy_hint`'s advice instead of "no file
    named model.safetensors" for a slabopt folder written before; otherwise unchanged."""

    @functools.wraps(from_pretrained)
    def wrapped(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs)
        except OSError as exc:
            hint = legacy_hint(pretrained_model_name_or_path)
            if hint is None:
                raise
            raise OSError(hint) from exc

    wrapped._slabopt_hint = True
    return wrapped


def register() -> None:
    """Register slabopt's quantization config and quantizer with transformers (once; later calls do
    nothing), and the advice for folders written before."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(SlaboptConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(SlaboptHfQuantizer)
    current = PreTrainedModel.__dict__["from_pretrained"].__func__
    if not getattr(current, "_slabopt_hint", False):
        PreTrainedModel.from_pretrained = classmethod(_with_legacy_hint(current))
