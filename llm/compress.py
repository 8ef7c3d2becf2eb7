"""Block-by-block calibration and compression of a Llama-family model (SPEC §5), save/load, resume.

Output folder layout::

    manifest.json            method, ratio, rank, seed, budgets, settings, per-layer log, sizes
    config.json, tokenizer*  the model's config and tokenizer (so the folder loads on its own)
    rest.safetensors         every weight that is not a decoder linear layer (embeddings, norms, ...)
    blocks/block_NNN.safetensors   the compressed linear layers of decoder block NNN (SLaBLinear buffers)
    resume.safetensors       (only while unfinished) inputs of the next block, for --resume
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .data import UserError
from .slablinear import SLaBLinear

# methods whose published algorithm needs the Gram matrix H = XᵀX (the others get d only)
NEEDS_GRAM = frozenset({"sparsegpt", "admm"})
CLI_ALIASES = {"slab": "alternating"}
MANIFEST = "manifest.json"
FORMAT = "slabopt-llm/1"


def solver_name(method: str) -> str:
    return CLI_ALIASES.get(method, method)


def decoder_layers(model) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UserError("model has no model.layers decoder stack; only Llama-like models are supported")
    return layers


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Linear layers of a block in forward order (nn.Linear or already-compressed SLaBLinear)."""
    return {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear | SLaBLinear)}


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model, windows: torch.Tensor, batch: int = 1):
    """Hidden states entering block 0 for each calibration batch, and the block's keyword args."""
    layers = decoder_layers(model)
    inputs, kwargs_box = [], {}

    def pre_hook(_mod, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        inputs.append(hs.detach().clone())
        if not kwargs_box:
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            kw["use_cache"] = False
            kw.pop("past_key_values", None)
            kw.pop("past_key_value", None)
            kwargs_box.update(kw)
        raise _Stop

    h = layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for i in range(0, windows.shape[0], batch):
            try:
                model(input_ids=windows[i:i + batch], use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
    return inputs, kwargs_box


def _run_block(block, inputs, kwargs):
    outs = []
    for hs in inputs:
        out = block(hs, **kwargs)
        outs.append((out[0] if isinstance(out, tuple) else out).detach())
    return outs


@torch.no_grad()
def collect_stats(block, inputs, kwargs, need_gram: bool):
    """Per-linear input statistics over all calibration tokens: Σx² per column (and XᵀX).

    Linear layers fed the very same tensor (q/k/v, gate/up) share one accumulator: it is computed
    once, by the first of them.
    """
    lin = block_linears(block)
    acc: dict[str, dict] = {}
    owner: dict[str, str] = {}
    seen: dict[int, tuple] = {}  # id → (owner, tensor); holding the tensor keeps its id unique

    def make_hook(name):
        def hook(_mod, args):
            x = args[0]
            key = seen.get(id(x), (None,))[0]
            if key is None:
                seen[id(x)] = (name, x)
                key = name
                xf = x.reshape(-1, x.shape[-1]).to(torch.float64)
                a = acc.setdefault(name, {"sq": torch.zeros(xf.shape[1], dtype=torch.float64),
                                          "n": 0})
                a["sq"] += (xf * xf).sum(0)
                a["n"] += xf.shape[0]
                if need_gram:
                    a["gram"] = a.get("gram", 0) + xf.T @ xf
            owner[name] = key
        return hook

    hooks = [m.register_forward_pre_hook(make_hook(n)) for n, m in lin.items()]
    try:
        for hs in inputs:
            seen.clear()
            block(hs, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return {n: acc[owner[n]] for n in lin}, owner


def layer_seed(seed: int, block: int, j: int) -> int:
    return seed + 1000 * block + j


def settings_key(s: dict) -> dict:
    """The settings that must match for --resume to continue a run."""
    keys = ("model_hash", "method", "solver", "ratio", "rank", "seed", "max_iter", "calib_tokens",
            "seqlen", "windows", "value_bits", "index_bits", "pattern", "store_dtype", "options")
    return {k: s.get(k) for k in keys}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


@torch.no_grad()
def compress_model(model, windows: torch.Tensor, out_dir: Path, *, method: str = "slab",
                   ratio: float = 0.5, rank: int = 1, seed: int = 0, max_iter: int = 20,
                   value_bits: int = 16, index_bits: int = 0, pattern: str = "row",
                   options: dict | None = None, resume: bool = False, meta: dict | None = None,
                   progress: bool = True, log: Callable[[str], None] | None = print,
                   on_block_done: Callable[[int], None] | None = None,
                   source_dir: Path | None = None) -> dict:
    """Compress every decoder linear layer block by block; write the folder; return the manifest.

    Each block gets the outputs of the already-compressed blocks before it. After each block its
    layers and the next block's inputs are saved, so a killed run continues with ``resume=True``
    and ends bit-identical to an uninterrupted run (every layer's seed depends only on its index).
    """
    import slabopt

    options = dict(options or {})
    solver = solver_name(method)
    out_dir = Path(out_dir)
    layers = decoder_layers(model)
    dtype = next(model.parameters()).dtype
    settings = dict(meta or {})
    settings.update(method=method, solver=solver, ratio=ratio, rank=rank, seed=seed, max_iter=max_iter,
                    value_bits=value_bits, index_bits=index_bits, pattern=pattern,
                    windows=int(windows.shape[0]), seqlen=int(windows.shape[1]),
                    calib_tokens=int(windows.numel()), store_dtype=f"float{value_bits}",
                    options=options)
    store_dtype = {16: torch.float16, 32: torch.float32}.get(value_bits)
    if store_dtype is None:
        raise UserError(f"value bits must be 16 or 32 for a saved model, got {value_bits}")
    manifest_path = out_dir / MANIFEST
    (out_dir / "blocks").mkdir(parents=True, exist_ok=True)

    start_block, layer_log, elapsed = 0, [], 0.0
    inputs, kwargs = capture_block_inputs(model, windows)
    if resume and manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if settings_key(old["settings"]) != settings_key(settings):
            diff = {k: (v, settings_key(settings)[k]) for k, v in settings_key(old["settings"]).items()
                    if settings_key(settings)[k] != v}
            raise UserError(f"cannot resume {out_dir}: its settings differ: {diff}")
        if old.get("complete"):
            if log:
                log(f"{out_dir} is already complete; nothing to do")
            return old
        elapsed = float(old.get("compress_seconds", 0.0))
        rpath = out_dir / "resume.safetensors"
        if rpath.is_file():  # written atomically after its block file: it decides where to go on
            from safetensors import safe_open

            with safe_open(str(rpath), "pt") as f:
                start_block = int(f.metadata()["next_block"])
            state = load_file(str(rpath))
            inputs = [state[f"input_{i}"] for i in range(len(inputs))]
            for b in range(start_block):
                _load_block(layers[b], out_dir, b, dtype)
                layer_log.extend(_block_log(out_dir, b))
        if log:
            log(f"resuming {out_dir} at block {start_block}/{len(layers)}")

    def save_manifest(next_block: int, complete: bool) -> dict:
        man = {"format": FORMAT, "slabopt_version": slabopt.__version__, "complete": complete,
               "next_block": next_block, "settings": settings, "layers": layer_log,
               "compress_seconds": elapsed, "num_blocks": len(layers),
               "config_model_type": model.config.model_type}
        if complete:
            man["sizes"] = size_report(out_dir, model, layer_log, value_bits)
        _write_json(manifest_path, man)
        return man

    if start_block == 0:
        _save_rest(model, out_dir, source_dir)
    save_manifest(start_block, False)

    pbar = None
    if progress:
        from tqdm import tqdm

        pbar = tqdm(total=len(layers), initial=start_block, desc=f"{method} r={ratio}", unit="block")
    for b in range(start_block, len(layers)):
        t0 = time.perf_counter()
        block = layers[b]
        need_gram = solver in NEEDS_GRAM or options.get("_gram", False)
        stats, owner = collect_stats(block, inputs, kwargs, need_gram)
        tensors = {}
        lin = block_linears(block)
        for j, (name, mod) in enumerate(lin.items()):
            if pbar is not None:
                pbar.set_postfix_str(f"block {b} {name} ({j + 1}/{len(lin)})", refresh=True)
            st = stats[name]
            W = mod.weight.detach().to(torch.float32)
            kw = {"gram": st["gram"].to(torch.float32)} if need_gram else {
                "col_norms": st["sq"].sqrt().to(torch.float32)}
            opts = {k: v for k, v in options.items() if not k.startswith("_")}
            try:
                res = slabopt.solve(W, ratio=ratio, rank=rank, method=solver, seed=layer_seed(seed, b, j),
                                    max_iter=max_iter, value_bits=value_bits, index_bits=index_bits,
                                    pattern=pattern, **kw, **opts)
            except (ValueError, TypeError) as exc:
                raise UserError(f"block {b} layer {name} {tuple(W.shape)}: {exc}") from None
            new = SLaBLinear.from_result(res, bias=mod.bias, store_dtype=store_dtype,
                                         compute_dtype=dtype)
            new.set_cache_weight(True)  # dense Ŵ for the block's calibration forward (faster on CPU)
            _set_module(block, name, new)
            for k, v in new.state_dict().items():
                tensors[f"{name}.{k}"] = v.contiguous()
            entry = {"block": b, "name": name, "shape": list(res.shape), "nnz": res.sparse.nnz,
                     "rank": res.rank, "bits": int(res.bits), "ratio": res.ratio,
                     "relative_error": res.relative_error, "objective": res.objective,
                     "objective_full": res.objective_full, "n_iter": res.n_iter,
                     "seconds": res.wall_time, "stats_from": owner[name]}
            layer_log.append(entry)
            if log:
                log(f"block {b:3d} {name:22s} {res.shape!s:12s} ratio {res.ratio:.4f} "
                    f"rel.err {res.relative_error:.4g} iters {res.n_iter} {res.wall_time:.2f}s")
        inputs = _run_block(block, inputs, kwargs)
        for mod in block_linears(block).values():
            mod.set_cache_weight(False)  # memory stays near one model
        meta_block = {"block": str(b), "names": json.dumps(list(lin)),
                      "shapes": json.dumps({n: [m.out_features, m.in_features] for n, m in lin.items()})}
        meta_block["log"] = json.dumps([e for e in layer_log if e["block"] == b])
        save_file(tensors, str(out_dir / "blocks" / f"block_{b:03d}.safetensors"), metadata=meta_block)
        tmp = out_dir / "resume.safetensors.tmp"
        save_file({f"input_{i}": x.contiguous() for i, x in enumerate(inputs)}, str(tmp),
                  metadata={"next_block": str(b + 1)})
        tmp.replace(out_dir / "resume.safetensors")
        elapsed += time.perf_counter() - t0
        save_manifest(b + 1, False)
        if pbar is not None:
            pbar.update(1)
        if on_block_done is not None:
            on_block_done(b)
    if pbar is not None:
        pbar.close()
    man = save_manifest(len(layers), True)
    (out_dir / "resume.safetensors").unlink(missing_ok=True)
    return man


def _save_rest(model, out_dir: Path, source_dir: Path | None) -> None:
    """Non-linear weights + config + tokenizer files."""
    lin_names = set()
    for b, block in enumerate(decoder_layers(model)):
        for n in block_linears(block):
            lin_names.add(f"model.layers.{b}.{n}.")
    state = {}
    for k, v in model.state_dict().items():
        if any(k.startswith(p) for p in lin_names):
            continue
        if k == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue
        state[k] = v.detach().contiguous().clone()
    save_file(state, str(out_dir / "rest.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out_dir)
    if source_dir is not None:
        for f in Path(source_dir).iterdir():
            if f.is_file() and (f.name.startswith("tokenizer") or f.name in
                                {"special_tokens_map.json", "vocab.json", "merges.txt",
                                 "chat_template.jinja", "tokenizer.model"}):
                shutil.copy2(f, out_dir / f.name)


def _block_log(out_dir: Path, b: int) -> list:
    from safetensors import safe_open

    with safe_open(str(out_dir / "blocks" / f"block_{b:03d}.safetensors"), "pt") as f:
        return json.loads(f.metadata().get("log", "[]"))


def _load_block(block: nn.Module, out_dir: Path, b: int, dtype: torch.dtype = torch.float32) -> None:
    path = out_dir / "blocks" / f"block_{b:03d}.safetensors"
    if not path.is_file():
        raise UserError(f"{path} is missing; the folder is incomplete")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        shapes = json.loads(f.metadata()["shapes"])
    state = load_file(str(path))
    for name, shape in shapes.items():
        sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
        _set_module(block, name, SLaBLinear.empty_like_state(sub, tuple(shape), compute_dtype=dtype))


def size_report(out_dir: Path, model, layer_log: list, value_bits: int) -> dict:
    """Real bytes on disk of the compressed linear layers vs the same layers dense at 16 bits."""
    files = sorted((out_dir / "blocks").glob("block_*.safetensors"))
    disk = sum(f.stat().st_size for f in files)
    dense16 = sum(2 * e["shape"][0] * e["shape"][1] for e in layer_log)
    budget_bits = sum(e["bits"] for e in layer_log)
    rest = (out_dir / "rest.safetensors").stat().st_size if (out_dir / "rest.safetensors").exists() else 0
    return {"linear_bytes_on_disk": disk, "linear_dense16_bytes": dense16,
            "linear_disk_ratio": 1 - disk / dense16 if dense16 else 0.0,
            "linear_budget_bytes": budget_bits / 8,
            "linear_budget_ratio": 1 - budget_bits / (8 * dense16) if dense16 else 0.0,
            "rest_bytes_on_disk": rest}


def load_compressed(out_dir: str | Path, dtype: torch.dtype = torch.float32):
    """(model, manifest) from a folder written by :func:`compress_model`; no pickle anywhere."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    mpath = out_dir / MANIFEST
    if not mpath.is_file():
        raise UserError(f"{out_dir} is not a compressed model folder (no {MANIFEST})")
    man = json.loads(mpath.read_text())
    if man.get("format") != FORMAT:
        raise UserError(f"{mpath} has format {man.get('format')!r}, expected {FORMAT!r}")
    if not man.get("complete"):
        raise UserError(f"{out_dir} is unfinished (next block {man.get('next_block')}); "
                        "finish it with `slabopt compress ... --resume`")
    config = AutoConfig.from_pretrained(str(out_dir), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    for b, block in enumerate(decoder_layers(model)):
        _load_block(block, out_dir, b, dtype)
    rest = load_file(str(out_dir / "rest.safetensors"))
    model.load_state_dict(rest, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    # buffers that live outside the state dict (rotary inv_freq) are recomputed off the meta device
    for name, mod in model.named_modules():
        if hasattr(mod, "inv_freq") and mod.inv_freq.is_meta:
            fresh = type(mod)(config=config)
            _set_module(model, name, fresh)
    leftovers = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if leftovers:
        raise UserError(f"{out_dir}: weights missing from the folder: {leftovers[:5]}")
    for block in decoder_layers(model):
        for mod in block_linears(block).values():
            mod.compute_dtype = dtype
    model.eval()
    return model, man
