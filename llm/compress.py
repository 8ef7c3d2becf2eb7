"""Block-by-block calibration and compression of a decoder model into an output folder.

Each decoder block gets the outputs of the already-compressed blocks before it; its linear layers
are solved one by one from the block's input statistics (column norms d, or the Gram matrix XᵀX
for solvers registered with ``needs_gram``) and replaced by :class:`SLaBLinear` layers. After each
block the folder records the block and the next block's inputs (see :mod:`.checkpoint`), so a
killed run continues with ``resume=True`` and writes the same bytes as an uninterrupted run (every
layer's seed depends only on its index; no wall-clock time is stored in a block file).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import torch
from safetensors.torch import save_file

import slabopt
from slabopt.registry import get_method

from .arch import block_linears, decoder_layers, set_module
from .checkpoint import (
    FORMAT,
    Checkpoint,
    block_file,
    check_output,
    clear_folder,
    create_folder,
    fingerprint_difference,
    load_block,
    read_manifest,
    read_tensors,
    resume_file,
    save_block,
    save_rest,
    size_report,
    source_fingerprint,
    verify_files,
)
from .errors import UserError
from .slablinear import SLaBLinear

CLI_ALIASES = {"slab": "alternating"}
STORE_DTYPES = {16: torch.float16, 32: torch.float32}


class ResumeMismatch(UserError):
    """``resume`` was asked for a folder made from other settings or another source model."""


def solver_name(method: str) -> str:
    return CLI_ALIASES.get(method, method)


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
                a = acc.setdefault(name, {"sq": torch.zeros(xf.shape[1], dtype=torch.float64)})
                a["sq"] += (xf * xf).sum(0)
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


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _check_method(method: str, options: dict) -> tuple[str, object]:
    solver = solver_name(method)
    try:
        info = get_method(solver)
    except ValueError:
        raise UserError(f"unknown method {method!r}; available: slab (= alternating), "
                        f"{', '.join(slabopt.methods())}") from None
    if not info.fixed_budget and not options.get("project", False):
        raise UserError(f"method {method!r} has no fixed budget (it keeps whatever rank and nonzeros it "
                        "reaches), so the saved model could be larger than the ratio says; add "
                        "--option project=true to project each layer to the budget")
    return solver, info


def _solve_layer(mod, st, b, j, name, solver, need_gram, s):
    W = mod.weight.detach().to(torch.float32)
    kw = {"gram": st["gram"].to(torch.float32)} if need_gram else {
        "col_norms": st["sq"].sqrt().to(torch.float32)}
    try:
        res = slabopt.solve(W, ratio=s["ratio"], rank=s["rank"], method=solver,
                            seed=layer_seed(s["seed"], b, j), max_iter=s["max_iter"],
                            value_bits=s["value_bits"], index_bits=s["index_bits"], pattern=s["pattern"],
                            **kw, **s["options"])
    except (ValueError, TypeError) as exc:
        raise UserError(f"block {b} layer {name} {tuple(W.shape)}: {exc}") from None
    allowed = (1 - Fraction(s["ratio"])) * res.dense_bits
    if res.bits > allowed:
        raise UserError(f"block {b} layer {name}: method {s['method']!r} stores {res.bits} bits, more "
                        f"than the {int(allowed)} bits that ratio {s['ratio']} allows")
    return res


def _compress_block(block, b, inputs, kwargs, solver, need_gram, s, dtype, pbar):
    """Replace the linear layers of ``block`` by compressed ones; return their log entries."""
    stats, owner = collect_stats(block, inputs, kwargs, need_gram)
    entries = []
    lin = block_linears(block)
    for j, (name, mod) in enumerate(lin.items()):
        if pbar is not None:
            pbar.set_postfix_str(f"block {b} {name} ({j + 1}/{len(lin)})", refresh=True)
        res = _solve_layer(mod, stats[name], b, j, name, solver, need_gram, s)
        new = SLaBLinear.from_result(res, bias=mod.bias, store_dtype=STORE_DTYPES[s["value_bits"]],
                                     compute_dtype=dtype)
        new.set_cache_weight(True)  # dense Ŵ for the block's calibration forward (faster on CPU)
        set_module(block, name, new)
        entries.append({"block": b, "name": name, "shape": list(res.shape), "nnz": res.sparse.nnz,
                        "rank": res.rank, "bits": int(res.bits), "ratio": res.ratio,
                        "relative_error": res.relative_error, "objective": res.objective,
                        "objective_full": res.objective_full, "n_iter": res.n_iter,
                        "seconds": res.wall_time, "stats_from": owner[name]})
    return entries


def _log_line(e: dict) -> str:
    return (f"block {e['block']:3d} {e['name']:22s} {tuple(e['shape'])!s:12s} ratio {e['ratio']:.4f} "
            f"rel.err {e['relative_error']:.4g} iters {e['n_iter']} {e['seconds']:.2f}s")


def _new_manifest(settings: dict, source: dict, model) -> dict:
    return {"format": FORMAT, "slabopt_version": slabopt.__version__, "complete": False,
            "next_block": 0, "num_blocks": len(decoder_layers(model)),
            "architecture": model.config.model_type, "settings": settings, "source": source,
            "files": {}, "layers": [], "compress_seconds": 0.0}


def _reopen(out: Path, settings: dict, source: dict) -> Checkpoint:
    """The folder of an earlier run with the same settings and source model, cleaned and verified."""
    man = read_manifest(out)
    if man["settings"] != settings:
        diff = {k: (man["settings"].get(k), v) for k, v in settings.items() if man["settings"].get(k) != v}
        raise ResumeMismatch(f"cannot resume {out}: its settings differ (old, new): {diff}")
    old = man.get("source", {}).get("files", {})
    if old != source["files"]:
        raise ResumeMismatch(f"cannot resume {out}: it was made from another source model "
                             f"({fingerprint_difference(old, source['files'])})")
    ck = Checkpoint(out, man)
    if man.get("complete"):
        verify_files(out, man)
        return ck
    ck.drop_unfinished()
    nxt = int(man["next_block"])
    for name in list(ck.files):  # inputs of blocks already done, blocks not yet committed
        if (name.startswith("resume/") and name != resume_file(nxt)) or (
                name.startswith("blocks/") and name >= block_file(nxt)):
            ck.remove(name)
    man["layers"] = [e for e in man["layers"] if e["block"] < nxt]
    ck.save()
    verify_files(out, man)
    return ck


def open_output(out: Path, settings: dict, source: dict, model, *, resume: bool,
                overwrite: bool) -> Checkpoint:
    """A :class:`Checkpoint` for ``out``: a new folder, a replaced one, or an earlier run to resume."""
    action = check_output(out, resume=resume, overwrite=overwrite)
    if action == "resume":
        return _reopen(out, settings, source)
    if action == "overwrite":
        clear_folder(out)
    man = _new_manifest(settings, source, model)
    create_folder(out, man)
    return Checkpoint(out, man)


def _restore(model, ck: Checkpoint, inputs: list, dtype) -> list:
    """Load the blocks an earlier run finished; return the inputs of the next block."""
    nxt = int(ck.manifest["next_block"])
    layers = decoder_layers(model)
    for b in range(nxt):
        load_block(layers[b], ck.folder, b, dtype)
    if nxt == 0 or nxt == len(layers):  # nothing left to run: no inputs were saved
        return inputs
    state, _ = read_tensors(ck.folder / resume_file(nxt))
    return [state[f"input_{i}"] for i in range(len(inputs))]


def _commit_block(ck: Checkpoint, b: int, block, inputs: list, entries: list, seconds: float) -> None:
    """Write block ``b`` and the next block's inputs, then advance the manifest to ``b + 1``."""
    last = b + 1 == ck.manifest["num_blocks"]
    names = [block_file(b)] + ([] if last else [resume_file(b + 1)])
    ck.announce(*names)
    save_block(ck, b, block)
    if not last:
        save_file({f"input_{i}": x.contiguous() for i, x in enumerate(inputs)},
                  str(ck.path(resume_file(b + 1))))
    for name in names:
        ck.record(name)
    man = ck.manifest
    man["next_block"] = b + 1
    man["layers"].extend(entries)
    man["compress_seconds"] += seconds
    ck.save()
    if b > 0:
        ck.remove(resume_file(b))
        ck.save()


def compress_settings(windows: torch.Tensor, *, method: str, ratio: float, rank: int, seed: int,
                      max_iter: int | None, value_bits: int, index_bits: int, pattern: str,
                      options: dict, text: str | None) -> dict:
    """Everything that decides the bytes of the output (compared exactly by ``resume``)."""
    if value_bits not in STORE_DTYPES:
        raise UserError(f"value bits must be 16 or 32 for a saved model, got {value_bits}")
    return {"method": method, "solver": solver_name(method), "ratio": ratio, "rank": rank, "seed": seed,
            "max_iter": max_iter, "value_bits": value_bits, "index_bits": index_bits,
            "pattern": pattern, "options": dict(options), "store_dtype": f"float{value_bits}",
            "windows": int(windows.shape[0]), "seqlen": int(windows.shape[1]),
            "calib_tokens": int(windows.numel()), "calib_sha256": _tensor_sha256(windows), "text": text}


@torch.no_grad()
def compress_model(model, windows: torch.Tensor, out_dir: Path, *, method: str = "slab",
                   ratio: float = 0.5, rank: int = 1, seed: int = 0, max_iter: int | None = None,
                   value_bits: int = 16, index_bits: int = 0, pattern: str = "row",
                   options: dict | None = None, resume: bool = False, overwrite: bool = False,
                   source: dict | None = None, text: str | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = print,
                   on_block_done: Callable[[int], None] | None = None,
                   source_dir: Path | None = None) -> dict:
    """Compress every decoder linear layer block by block into ``out_dir``; return the manifest.

    ``resume`` continues an unfinished folder made with the same settings from the same source
    model (their hashes are compared); ``overwrite`` replaces a folder slabopt wrote. ``source``
    describes the model for the manifest (name, path); ``source_dir`` is its checkpoint folder,
    whose config and weight files are hashed (without it, the tensors in memory are).
    """
    options = dict(options or {})
    solver, info = _check_method(method, options)
    out_dir = Path(out_dir)
    settings = compress_settings(windows, method=method, ratio=ratio, rank=rank, seed=seed,
                                 max_iter=max_iter, value_bits=value_bits, index_bits=index_bits,
                                 pattern=pattern, options=options, text=text)
    check_output(out_dir, resume=resume, overwrite=overwrite)  # fail before the costly hashing
    src = dict(source or {}, files=source_fingerprint(source_dir, None if source_dir else model.state_dict()))
    ck = open_output(out_dir, settings, src, model, resume=resume, overwrite=overwrite)
    if ck.manifest["complete"]:
        if log:
            log(f"{out_dir} is already complete; nothing to do")
        return ck.manifest
    dtype = next(model.parameters()).dtype
    layers = decoder_layers(model)
    inputs, kwargs = capture_block_inputs(model, windows)
    inputs = _restore(model, ck, inputs, dtype)
    start = int(ck.manifest["next_block"])
    if start == 0 and "rest.safetensors" not in ck.files:
        save_rest(ck, model, source_dir)
    elif log:
        log(f"resuming {out_dir} at block {start}/{len(layers)}")
    pbar = None
    if progress:
        from tqdm import tqdm

        pbar = tqdm(total=len(layers), initial=start, desc=f"{method} r={ratio}", unit="block")
    for b in range(start, len(layers)):
        t0 = time.perf_counter()
        entries = _compress_block(layers[b], b, inputs, kwargs, solver, info.needs_gram, settings,
                                  dtype, pbar)
        inputs = _run_block(layers[b], inputs, kwargs)
        for mod in block_linears(layers[b]).values():
            mod.set_cache_weight(False)  # memory stays near one model
        _commit_block(ck, b, layers[b], inputs, entries, time.perf_counter() - t0)
        for e in entries:
            ck.log(_log_line(e))
            if log:
                log(_log_line(e))
        if pbar is not None:
            pbar.update(1)
        if on_block_done is not None:
            on_block_done(b)
    if pbar is not None:
        pbar.close()
    ck.manifest["sizes"] = size_report(out_dir, ck.manifest["layers"])
    ck.manifest["complete"] = True
    ck.save()
    return ck.manifest

