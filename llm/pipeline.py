"""Block-by-block calibration and compression of a decoder model into an output folder.

The model stays on the CPU in its storage dtype. Each decoder block in turn is moved to the compute
device, fed the outputs of the already-compressed blocks before it (kept on the CPU between blocks),
its linear layers are solved one by one from the block's input statistics (column norms d, or the
Gram matrix XᵀX for solvers registered with ``needs_gram``) and replaced by :class:`SLaBLinear`
layers, and the block goes back to the CPU -- the sequential onloading of SparseGPT, Wanda and
llm-compressor. After each block the folder records the block and the next block's inputs (see
:mod:`.checkpoint`), so a killed run continues with ``resume=True`` and writes the same bytes as an
uninterrupted run (every layer's seed depends only on its index; no wall-clock time is stored in a
block file). Under ``torchrun`` several processes share each block's work (:mod:`.distributed`,
docs/distributed.md); only rank 0 writes the folder.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import torch
from safetensors.torch import save_file

import slabopt
from slabopt.budget import POSITIONS, SPARSE_BITS
from slabopt.patterns import parse_pattern
from slabopt.registry import get_method

from . import allocation, console, distributed
from .allocator import limit_heap_retention, release_freed_memory
from .arch import (
    DEFAULT_IGNORE,
    block_linears,
    block_prefix,
    capture_calls,
    decoder_layers,
    map_tensors,
    set_module,
)
from .checkpoint import (
    FORMAT,
    REST,
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
    source_dtype,
    source_fingerprint,
    verify_files,
)
from .distributed import Dist
from .errors import UserError
from .refine import refine_block
from .slablinear import SLaBLinear

ALLOCATIONS = ("uniform", "owl")


def is_nm_pattern(pattern: str) -> bool:
    try:
        return parse_pattern(pattern).kind == "nm"
    except (ValueError, TypeError):
        return False  # reported by the pattern check
STORE_DTYPES = {16: torch.float16, 32: torch.float32}
# recorded only when set, so folders made before them still resume
NEWER_SETTINGS = ("bits", "l_group", "rest_dtype")


class ResumeMismatch(UserError):
    """``resume`` was asked for a folder made from other settings or another source model."""


def solver_name(method: str) -> str:
    """The registered solver a method name runs (``slab`` is ``alternating``; slabopt.registry.ALIASES)."""
    from slabopt.registry import ALIASES

    return ALIASES.get(method, method)


@dataclass(frozen=True)
class CompressConfig:
    """What decides the compressed model: method, budget, solver settings and which layers.

    ``ratio`` may be ``None`` for an N:M ``pattern``, which fixes the sparse part by itself, and for
    quantisers (``rtn``, ``gptq``), whose bits are fixed by their options (``bits``, ``group_size``).
    ``targets`` / ``ignore`` are regular expressions on the full names of the linear layers inside
    the decoder blocks (``re.search``); ``None`` targets every one. ``options`` are the solver's own
    keywords. ``sparse_bits`` = q stores the kept values of S as q-bit codes with a scale per row
    (docs/formulation.md §4.7; ``"auto"``: q chosen per layer); ``None`` keeps them at ``value_bits``.
    ``refine_steps`` > 0 tunes the real-valued parts of each compressed block on its output error
    (:mod:`.refine`). ``allocation`` "owl" gives each block its own ratio by OWL's outlier rule at
    the same total (:mod:`.allocation`); "uniform" gives every layer ``ratio``. ``bits`` (instead of
    ``ratio``) is the budget in bits per weight on disk, every stored bit counted
    (``slabopt.solve(bits=)``); ``l_group`` stores L per group of that many input columns
    (docs/formulation.md §2.5). ``rest_dtype`` is the dtype of the weights that are not compressed
    (embeddings, norms, the head) in the folder; ``None``: the source checkpoint's own.
    """

    method: str = "slab"
    ratio: float | None = 0.5
    rank: int = 1
    seed: int = 0
    max_iter: int | None = None
    value_bits: int = 16
    index_bits: int = 0
    pattern: str = "row"
    positions: str = "index"
    sparse_bits: int | str | None = None
    refine_steps: int = 0
    allocation: str = "uniform"
    options: Mapping = field(default_factory=dict)
    targets: str | None = None
    ignore: str | None = DEFAULT_IGNORE
    bits: float | None = None
    l_group: int | None = None
    rest_dtype: str | None = None

    @property
    def solver(self) -> str:
        return solver_name(self.method)

    def check(self):
        """The registered method's info; ``UserError`` for settings that cannot be saved."""
        try:
            info = get_method(self.solver)
        except ValueError:
            raise UserError(f"unknown method {self.method!r}; available: slab (= alternating), "
                            f"{', '.join(slabopt.methods())}") from None
        if not info.fixed_budget and not self.options.get("project", False):
            raise UserError(f"method {self.method!r} has no fixed budget (it keeps whatever rank and "
                            "nonzeros it reaches), so the saved model could be larger than the ratio "
                            "says; add --option project=true to project each layer to the budget")
        if self.positions not in POSITIONS:
            raise UserError(f"positions must be one of {', '.join(POSITIONS)}, "
                            f"got {self.positions!r}")
        if self.sparse_bits not in (None, "auto", *range(SPARSE_BITS[0], SPARSE_BITS[1] + 1)):
            raise UserError(f"sparse bits must be an integer from {SPARSE_BITS[0]} to {SPARSE_BITS[1]}, "
                            f"auto or none, got {self.sparse_bits!r}")
        if self.sparse_bits is not None and "sparse" not in info.components:
            raise UserError(f"--sparse-bits codes the values of S, but method {self.method!r} stores no "
                            "sparse part")
        if self.allocation not in ALLOCATIONS:
            raise UserError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        if self.allocation != "uniform" and (self.ratio is None or is_nm_pattern(self.pattern)):
            raise UserError("--allocation owl moves a ratio between blocks: give --ratio, and a row or "
                            "global pattern")
        if not isinstance(self.refine_steps, int) or self.refine_steps < 0:
            raise UserError(f"refine steps must be an integer >= 0, got {self.refine_steps!r}")
        if self.value_bits not in STORE_DTYPES:
            raise UserError(f"value bits must be 16 or 32 for a saved model, got {self.value_bits}")
        try:
            is_nm = parse_pattern(self.pattern).kind == "nm"
        except (ValueError, TypeError) as exc:
            raise UserError(str(exc)) from None
        if self.bits is not None and self.ratio is not None:
            raise UserError("give the budget as --ratio or as --bits, not both")
        if self.bits is not None and self.allocation != "uniform":
            raise UserError("--allocation owl moves a ratio between blocks: use --ratio with it")
        if self.l_group is not None and not info.grouped_lowrank:
            raise UserError(f"--l-group stores L per group of columns; method {self.method!r} stores one L "
                            "(use slab_obs)")
        if self.ratio is None and self.bits is None and not is_nm and info.quant_layout is None:
            raise UserError(f"method {self.method!r} with pattern {self.pattern!r} needs a ratio; only N:M "
                            "patterns and quantisers (rtn, gptq) fix the budget by themselves")
        return info

    def solve_settings(self) -> dict:
        """The keywords of :func:`slabopt.solve` (and :func:`slabopt.layer_budget`) for every layer:
        the budget (ratio or bits), rank, method, codes and positions, groups of L, the options."""
        budget = {"ratio": self.ratio} if self.bits is None else {"bits": self.bits}
        extra = {} if self.l_group is None else {"l_group": self.l_group}
        return dict(**budget, rank=self.rank, method=self.solver, value_bits=self.value_bits,
                    index_bits=self.index_bits, pattern=self.pattern, positions=self.positions,
                    sparse_bits=self.sparse_bits, **extra, **self.options)

    def record(self, windows: torch.Tensor, text: str | None, dtype: torch.dtype) -> dict:
        """The settings as stored in the manifest and compared by ``resume``."""
        own = {key: value for key, value in asdict(self).items()
               if value is not None or key not in NEWER_SETTINGS}  # older folders resume as before
        return {**own, "options": dict(self.options), "solver": self.solver,
                "store_dtype": f"float{self.value_bits}", "model_dtype": str(dtype).removeprefix("torch."),
                "windows": int(windows.shape[0]), "seqlen": int(windows.shape[1]),
                "calib_tokens": int(windows.numel()), "calib_sha256": _tensor_sha256(windows), "text": text}


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None → CUDA when present, else CPU; ``UserError`` for a device that is not there."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N, auto") from None
    missing = not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()
    if dev.type == "cuda" and missing:
        raise UserError(f"device {device!r} is not available here ({torch.cuda.device_count()} CUDA "
                        "devices); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported; allowed: cpu, cuda, cuda:N, auto")
    return dev


# --------------------------------------------------------------------------- calibration
def _run_block(block, inputs: list, calls: list, device: torch.device) -> list:
    """Outputs of ``block`` for each batch of ``inputs`` (kept on the CPU)."""
    outs = []
    for hs, (args, kwargs) in zip(inputs, calls, strict=True):
        args, kwargs = map_tensors((args, kwargs), lambda t: t.to(device))
        out = block(hs.to(device), *args, **kwargs)
        outs.append((out[0] if isinstance(out, tuple) else out).detach().to("cpu"))
    return outs


@torch.no_grad()
def collect_stats(block, inputs, calls, lin: dict, need_gram: bool, device: torch.device):
    """Per-linear input statistics over all calibration tokens: Σx² per column (and XᵀX).

    Linear layers fed the very same tensor (q/k/v, gate/up) share one accumulator: it is computed
    once, by the first of them. Sums are in float64 on the compute device.
    """
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
                a = acc.setdefault(name, {"sq": torch.zeros(xf.shape[1], dtype=torch.float64,
                                                            device=xf.device)})
                a["sq"] += (xf * xf).sum(0)
                if need_gram:
                    a["gram"] = a.get("gram", 0) + xf.T @ xf
            owner[name] = key
        return hook

    hooks = [m.register_forward_pre_hook(make_hook(n)) for n, m in lin.items()]
    try:
        for hs, (args, kwargs) in zip(inputs, calls, strict=True):
            seen.clear()
            args, kwargs = map_tensors((args, kwargs), lambda t: t.to(device))
            block(hs.to(device), *args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return {n: acc[owner[n]] for n in lin}, owner


def layer_seed(seed: int, block: int, j: int) -> int:
    return seed + 1000 * block + j


# ------------------------------------------------------------------------------- solving
def _solve_layer(mod, st, b, j, name, cfg: CompressConfig, need_gram: bool):
    W = mod.weight.detach().to(torch.float32)
    kw = {"gram": st["gram"].to(torch.float32)} if need_gram else {
        "col_norms": st["sq"].sqrt().to(torch.float32)}
    if W.device.type == "cpu":  # NumPy views: the solvers' numba row kernel applies to NumPy arrays
        W, kw = W.numpy(), {key: value.numpy() for key, value in kw.items()}
    try:
        res = slabopt.solve(W, **cfg.solve_settings(), seed=layer_seed(cfg.seed, b, j), max_iter=cfg.max_iter,
                            **kw)
    except (ValueError, TypeError) as exc:
        raise UserError(f"block {b} layer {name} {tuple(W.shape)}: {exc}") from None
    if cfg.bits is not None:
        allowed = Fraction(cfg.bits) * res.shape[0] * res.shape[1]
    else:
        allowed = res.bits if cfg.ratio is None else (1 - Fraction(cfg.ratio)) * res.dense_bits
    if res.bits > allowed:
        asked = f"ratio {cfg.ratio}" if cfg.bits is None else f"{cfg.bits} bits per weight"
        raise UserError(f"block {b} layer {name}: method {cfg.method!r} stores {res.bits} bits, more "
                        f"than the {int(allowed)} bits that {asked} allows")
    return res


def _log_entry(b: int, name: str, res, owner: str) -> dict:
    return {"block": b, "name": name, "shape": list(res.shape), "nnz": res.sparse.nnz, "rank": res.rank,
            "bits": int(res.bits), "ratio": res.ratio, "relative_error": res.relative_error,
            "objective": res.objective, "objective_full": res.objective_full, "n_iter": res.n_iter,
            "seconds": res.wall_time, "stats_from": owner}


def _compress_block(block, b, prefix, inputs, calls, cfg: CompressConfig, need_gram, device, pbar,
                    d: Dist = distributed.SINGLE):
    """Replace the target linear layers of ``block`` (on ``device``) by compressed ones; log them.

    With several ranks each solves the layers :func:`.distributed.assign_layers` gives it, then
    every layer is broadcast from its rank, so all ranks end with the same compressed block.
    """
    dtype = next(block.parameters()).dtype
    lin = block_linears(block, prefix, cfg.targets, cfg.ignore)
    with d.step():  # a failure here (out of memory) stops every rank, as in the solves
        stats, owner = collect_stats(block, inputs, calls, lin, need_gram, device)
    d.all_reduce_stats(stats, owner)
    ranks = _layer_ranks(lin, cfg, need_gram, d)
    entries = {}
    with d.step():
        for j, (name, mod) in enumerate(lin.items()):
            if ranks[j] != d.rank:
                continue
            pbar.set_postfix_str(f"block {b} {name} ({j + 1}/{len(lin)})", refresh=True)
            res = _solve_layer(mod, stats[name], b, j, name, cfg, need_gram)
            new = SLaBLinear.from_result(res, bias=mod.bias, store_dtype=STORE_DTYPES[cfg.value_bits],
                                         compute_dtype=dtype).to(device)
            new.set_cache_weight(True)  # dense Ŵ for the block's calibration forward (faster on CPU)
            set_module(block, name, new)
            entries[j] = _log_entry(b, name, res, owner[name])
            del res
            release_freed_memory()  # the solve's buffers go back to the system, not to the heap
    if d.active:
        for j, name in enumerate(lin):
            entries[j] = _share_layer(block, name, ranks[j], entries.get(j), d, dtype, device)
    return [entries[j] for j in range(len(lin))]


def _layer_ranks(lin: dict, cfg: CompressConfig, need_gram: bool, d: Dist) -> list[int]:
    """The rank that solves each layer of ``lin`` (all rank 0 in one process)."""
    if not d.active:
        return [0] * len(lin)
    iters = cfg.max_iter or 20
    costs = [distributed.layer_cost(tuple(m.weight.shape), cfg.rank, iters, need_gram) for m in lin.values()]
    return distributed.assign_layers(costs, d.world)


def _share_layer(block, name: str, src: int, entry: dict | None, d: Dist, dtype, device) -> dict:
    """Broadcast layer ``name`` from rank ``src``; the others put the received layer in ``block``."""
    mod = block.get_submodule(name) if d.rank == src else None
    state, shape, entry = d.share_layer(mod, entry, src, device)
    if d.rank != src:
        new = SLaBLinear.empty_like_state(state, shape, compute_dtype=dtype).to(device)
        new.set_cache_weight(True)
        set_module(block, name, new)
    return entry


def _log_line(e: dict) -> str:
    return (f"block {e['block']:3d} {e['name']:22s} {tuple(e['shape'])!s:12s} ratio {e['ratio']:.4f} "
            f"rel.err {e['relative_error']:.4g} iters {e['n_iter']} {e['seconds']:.2f}s")


# ---------------------------------------------------------------------------- the folder
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


def _restore(model, folder: Path, nxt: int, inputs: list, keep_in_memory: bool,
             d: Dist = distributed.SINGLE) -> list:
    """Load the blocks an earlier run finished (or drop them); return this rank's inputs of the next
    block (rank 0 reads them and sends each rank its share)."""
    layers = decoder_layers(model)
    dtype = next(model.parameters()).dtype
    with d.step():
        for b in range(nxt):
            if keep_in_memory:
                load_block(layers[b], folder, b, dtype)  # other ranks: needs a shared filesystem
            else:
                layers[b].to("meta")
        if nxt == 0 or nxt == len(layers):  # nothing left to run: no inputs were saved
            return inputs[d.share(len(inputs))]
        full = None
        if d.main:
            state, _ = read_tensors(folder / resume_file(nxt))
            full = [state[f"input_{i}"] for i in range(len(inputs))]
    return d.scatter_inputs(full, len(inputs))


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


def check_layer_settings(model, cfg: CompressConfig) -> None:
    """Every setting checked against every target layer shape before any work
    (:func:`slabopt.layer_budget`: the method's options, rank, ratio or bits, pattern, codes);
    ``UserError`` naming the first layer that cannot take them."""
    seen: set[tuple[int, int]] = set()
    for b, block in enumerate(decoder_layers(model)):
        prefix = block_prefix(model, b)
        for name, mod in block_linears(block, prefix, cfg.targets, cfg.ignore).items():
            shape = (int(mod.weight.shape[0]), int(mod.weight.shape[1]))
            if shape in seen:
                continue
            seen.add(shape)
            try:
                slabopt.layer_budget(shape, **cfg.solve_settings())
            except (ValueError, TypeError) as exc:
                raise UserError(f"layer {prefix}{name} {shape}: {exc}") from None


def _target_names(model, cfg: CompressConfig) -> set[str]:
    names = set()
    for b, block in enumerate(decoder_layers(model)):
        prefix = block_prefix(model, b)
        names |= {prefix + n for n in block_linears(block, prefix, cfg.targets, cfg.ignore)}
    if not names:
        raise UserError(f"no linear layer of {type(model).__name__}'s decoder blocks matches targets "
                        f"{cfg.targets!r} and not ignore {cfg.ignore!r} (slabopt compresses "
                        "torch.nn.Linear layers)")
    return names


# --------------------------------------------------------------------------------- driver
@torch.no_grad()
def compress_model(model, windows: torch.Tensor, out_dir: Path, config: CompressConfig | None = None, *,
                   device: str | torch.device = "cpu", resume: bool = False, overwrite: bool = False,
                   source: dict | None = None, text: str | None = None, progress: bool = True,
                   log: Callable[[str], None] | None = print,
                   on_block_done: Callable[[int], None] | None = None,
                   source_dir: Path | None = None, keep_in_memory: bool = True,
                   dist: Dist | None = None, **settings) -> dict:
    """Compress the decoder linear layers block by block into ``out_dir``; return the manifest.

    ``config`` (or its fields as keywords, e.g. ``method="wanda", ratio=0.6``) says what to do;
    ``device`` where blocks are calibrated and solved (the model itself stays where it is).
    ``resume`` continues an unfinished folder made with the same settings from the same source
    model (their hashes are compared); ``overwrite`` replaces a folder slabopt wrote. ``source``
    describes the model for the manifest (name, path); ``source_dir`` is its checkpoint folder,
    whose config and weight files are hashed (without it, the tensors in memory are).
    With ``keep_in_memory`` (default) ``model`` ends as the compressed model; without, each block
    is dropped (moved to the meta device) once it is on disk, so memory does not grow with depth.
    ``dist`` (default: the one :func:`.distributed.init` set up, else a single process) splits the
    work over the ranks of a torchrun launch; only rank 0 writes ``out_dir``, logs and shows progress.
    """
    d = dist or distributed.current()
    progress, log = progress and d.main, log if d.main else None
    with d.step():
        cfg = replace(config or CompressConfig(), **settings)
        info = cfg.check()
        dev = resolve_device(device)
        out_dir = Path(out_dir)
        record = cfg.record(windows, text, next(model.parameters()).dtype)
        targets = _target_names(model, cfg)
        check_layer_settings(model, cfg)
        if (cfg.refine_steps or cfg.allocation != "uniform") and d.active:
            raise UserError("--refine-steps and --allocation owl run in one process only; start compress "
                            "without torchrun")
        if d.data_parallel and d.active and windows.shape[0] < d.world:
            raise UserError(f"--data-parallel needs at least one calibration window per process: "
                            f"{windows.shape[0]} windows for {d.world} processes")
        ck = _open(out_dir, record, source, source_dir, model, resume, overwrite) if d.main else None
    state = d.broadcast_object(ck and {k: ck.manifest[k] for k in ("complete", "next_block")})
    if state["complete"]:
        if d.main:
            console.notice(f"{out_dir} is already complete; nothing to do")
        return d.broadcast_object(ck and ck.manifest)
    layers = decoder_layers(model)
    inputs, calls = capture_calls(model, windows)
    share = d.share(len(inputs))
    calls = [c[share] for c in calls]
    start = int(state["next_block"])
    ratios = _block_ratios(model, inputs, calls, cfg, dev, log)  # from block 0's inputs, also on resume
    inputs = _restore(model, out_dir, start, inputs, keep_in_memory, d)
    with d.step():
        if d.main and start == 0 and REST not in ck.files:
            save_rest(ck, model, source_dir, targets, cfg.rest_dtype or source_dtype(source_dir))
        elif d.main:
            console.notice(f"resuming {out_dir} at block {start} of {len(layers)}")
    _compress_blocks(model, ck, start, inputs, calls, cfg, info.needs_gram, dev, progress, log,
                     on_block_done, keep_in_memory, d, ratios)
    with d.step():
        if d.main:
            ck.manifest["sizes"] = size_report(out_dir, ck.manifest["layers"])
            ck.manifest["complete"] = True
            ck.save()
    return d.broadcast_object(ck and ck.manifest)


def _open(out_dir: Path, record: dict, source: dict | None, source_dir: Path | None, model, resume: bool,
          overwrite: bool) -> Checkpoint:
    check_output(out_dir, resume=resume, overwrite=overwrite)  # fail before the costly hashing
    src = dict(source or {}, files=source_fingerprint(source_dir, None if source_dir else model.state_dict()))
    return open_output(out_dir, record, src, model, resume=resume, overwrite=overwrite)


def _block_ratios(model, inputs, calls, cfg: CompressConfig, dev, log) -> list[float | None]:
    """Each block's ratio: ``cfg.ratio`` everywhere, or OWL's allocation (a dense calibration pass)."""
    layers = decoder_layers(model)
    if cfg.allocation == "uniform":
        return [cfg.ratio] * len(layers)
    outliers = allocation.dense_outlier_ratios(model, inputs, calls, dev, cfg.targets, cfg.ignore,
                                               collect_stats, _run_block)
    sizes = [sum(m.weight.numel() for m in block_linears(blk, block_prefix(model, b), cfg.targets,
                                                         cfg.ignore).values())
             for b, blk in enumerate(layers)]
    try:
        ratios = allocation.block_ratios(outliers, sizes, cfg.ratio)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if log:
        log("OWL block ratios: " + " ".join(f"{r:.4f}" for r in ratios))
    return ratios


def _compress_blocks(model, ck, start, inputs, calls, cfg, need_gram, dev, progress, log, on_block_done,
                     keep_in_memory, d: Dist = distributed.SINGLE, ratios: list | None = None):
    """Blocks ``start`` … last, one after the other (:func:`_compress_one_block`), under one bar."""
    layers = decoder_layers(model)
    budget = cfg.pattern if cfg.ratio is None else f"r={cfg.ratio}"
    pbar = console.progress_bar(total=len(layers), initial=start, desc=f"{cfg.method} {budget}", unit="block",
                                enabled=progress)
    try:
        for b in range(start, len(layers)):
            cfg_b = cfg if ratios is None else replace(cfg, ratio=ratios[b])
            inputs = _compress_one_block(model, ck, b, inputs, calls[b], cfg_b, need_gram, dev, pbar, log,
                                         keep_in_memory, d)
            pbar.update(1)
            if on_block_done is not None:
                on_block_done(b)
    finally:
        pbar.close()


def _compress_one_block(model, ck, b, inputs, calls_b, cfg, need_gram, dev, pbar, log, keep_in_memory,
                        d: Dist) -> list:
    """Block b compressed (and refined), committed to ``ck`` and logged; returns its outputs, the
    next block's inputs."""
    t0 = time.perf_counter()
    block = decoder_layers(model)[b].to(dev)
    if cfg.refine_steps:
        with d.step():
            targets = _run_block(block, inputs, calls_b, dev)  # the dense block's outputs
    entries = _compress_block(block, b, block_prefix(model, b), inputs, calls_b, cfg, need_gram, dev, pbar, d)
    if cfg.refine_steps:
        with d.step():
            fit = refine_block(block, inputs, calls_b, targets, dev, cfg.refine_steps)
        del targets
        for e in entries:
            e["block_loss_before_refine"] = fit["loss_start"]
            e["block_loss_after_refine"] = fit["loss_end"]
        _cache_weights(block, True)  # dense Ŵ again for the block's calibration forward
    part = d.forward_share(len(inputs))
    with d.step():
        outs = _run_block(block, inputs[part], calls_b[part], dev)
    inputs = d.all_gather_outputs(outs)
    del outs
    _cache_weights(block, False)  # memory stays near one model
    block.to("cpu")
    full = d.gather_inputs(inputs)  # rank 0: every window's inputs, to save for --resume
    with d.step():
        if d.main:
            _commit_block(ck, b, block, full, entries, time.perf_counter() - t0)
    del full
    if not keep_in_memory:
        block.to("meta")  # on disk now: its memory goes back
    release_freed_memory()
    for e in entries:
        if d.main:
            ck.log(_log_line(e))
        if log:
            log(_log_line(e))
    return inputs


def _cache_weights(block, on: bool) -> None:
    for mod in block.modules():
        if isinstance(mod, SLaBLinear):
            mod.set_cache_weight(on)


def compress_checkpoint(model: str | None, out_dir: Path, config: CompressConfig, *,
                        calib_tokens: int = 16384, seqlen: int = 1024, dtype: str = "float32",
                        device: str | torch.device = "cpu",
                        resume: bool = False, overwrite: bool = False, progress: bool = True,
                        log: Callable[[str], None] | None = None,
                        calib_file: str | Path | None = None) -> dict:
    """Load a checkpoint folder (``None``: the shipped SmolLM2) in ``dtype`` on the CPU, draw the
    calibration windows (from the shipped text, or ``calib_file``: .txt or .jsonl) and compress it
    into ``out_dir``; return the manifest."""
    from . import data

    d = distributed.current()
    with d.step():  # every rank loads the model and draws the same windows
        config.check()
        if d.main:
            check_output(Path(out_dir), resume=resume, overwrite=overwrite)  # before the slow model load
        limit_heap_retention()  # freed buffers above 1 MiB go back to the system (see .allocator)
        if calib_file is not None:
            data.read_text_file(calib_file)  # a bad file fails before the slow model load
        shell = data.empty_model(model)
        if shell is not None:
            check_layer_settings(shell, config)  # before the slow load
        net, tok, path = data.load_model(model, dtype)
        if calib_file is None:
            calib, text = data.token_splits(tok, path)[0], data.CALIB_TEXT
        else:
            calib, text = data.user_tokens(tok, calib_file), data.describe_text_file(calib_file)
        bos = data.bos_token(tok)
        windows = data.calibration_windows(calib, calib_tokens, seqlen, config.seed, bos)
        text += "; each window starts with the BOS token" if bos is not None else ""
    t0 = time.perf_counter()
    man = compress_model(net, windows, out_dir, config, device=device, resume=resume, overwrite=overwrite,
                         source={"model": model or data.DEFAULT_MODEL_NAME, "path": str(path)}, text=text,
                         progress=progress, log=log, source_dir=path, keep_in_memory=False)
    man["wall_seconds_this_run"] = time.perf_counter() - t0
    return man
