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

:func:`compress_model` is one loop over the blocks of a :class:`CompressionRun` (the model, the
settings, the process group, the folder and the calibration state): onload → input statistics →
solve this rank's layers → share them → refine → propagate (the next block's inputs) → commit.
Every run of a block over the calibration windows goes through :mod:`.calibration`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import slabopt
from slabopt.patterns import parse_pattern

from . import allocation, console, distributed
from .arch import (
    DEFAULT_IGNORE,
    block_linears,
    block_prefix,
    capture_calls,
    decoder_layers,
    set_module,
)
from .calibration import BlockInputs, block_outputs, collect_stats
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
from .heap import limit_heap_retention, release_freed_memory
from .recipe import DEFAULT
from .recipe import check as check_settings
from .recipe import resolve as resolve_settings
from .refine import refine_block
from .slablinear import SLaBLinear

ALLOCATIONS = ("uniform", "owl")


def is_nm_pattern(pattern: str) -> bool:
    """Whether ``pattern`` is an N:M pattern (False for one that does not parse)."""
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

    A setting left out is chosen as ``slabopt compress`` chooses it (:mod:`.recipe`, the one place
    of the defaults and of the recommended recipe): ``CompressConfig(ratio=0.8)`` or
    ``CompressConfig(bits=2.5)`` is the recipe measured best at that size, ``CompressConfig()`` slab
    at ratio 0.5 with rank 1, the positions of S counted as stored and its values as codes. Left out
    is ``None`` (for ``sparse_bits``: :data:`.recipe.DEFAULT`, as ``None`` there keeps the values at
    ``value_bits``); a complete configuration stays as it is, so :func:`dataclasses.replace` of one
    changes only what it names.

    ``ratio`` is ``None`` for an N:M ``pattern``, which fixes the sparse part by itself, and for
    quantisers (``rtn``, ``gptq``), whose bits are fixed by their options (``bits``, ``group_size``).
    ``bits`` (instead of ``ratio``) is the budget in bits per weight on disk, every stored bit
    counted (``slabopt.solve(bits=)``). ``targets`` / ``ignore`` are regular expressions on the full
    names of the linear layers inside the decoder blocks (``re.search``); ``None`` targets every one.
    ``options`` are the solver's own keywords. ``sparse_bits`` = q stores the kept values of S as
    q-bit codes with a scale per row (docs/formulation.md §4.7; ``"auto"``: q chosen per layer);
    ``None`` keeps them at ``value_bits``. ``refine_steps`` > 0 tunes the real-valued parts of each
    compressed block on its output error (:mod:`.refine`). ``allocation`` "owl" gives each block its
    own ratio by OWL's outlier rule at the same total (:mod:`.allocation`); "uniform" gives every
    layer ``ratio``. ``l_group`` stores L per group of that many input columns (docs/formulation.md
    §2.5). ``rest_dtype`` is the dtype of the weights that are not compressed (embeddings, norms,
    the head) in the folder; ``None``: the source checkpoint's own.
    """

    method: str | None = None
    ratio: float | None = None
    rank: int | None = None
    seed: int = 0
    max_iter: int | None = None
    value_bits: int = 16
    index_bits: int = 0
    pattern: str = "row"
    positions: str | None = None
    sparse_bits: int | str | None = DEFAULT
    refine_steps: int = 0
    allocation: str = "uniform"
    options: Mapping = field(default_factory=dict)
    targets: str | None = None
    ignore: str | None = DEFAULT_IGNORE
    bits: float | None = None
    l_group: int | None = None
    rest_dtype: str | None = None

    def __post_init__(self) -> None:
        """Choose the settings left out (:func:`.recipe.resolve`)."""
        chosen, _, _ = resolve_settings({name: getattr(self, name) for name in self.__dataclass_fields__})
        for name, value in chosen.items():
            object.__setattr__(self, name, value)

    @property
    def solver(self) -> str:
        return solver_name(self.method)

    def check(self):
        """The registered method's info; ``UserError`` for settings that cannot be compressed and
        saved (:func:`.recipe.check`: the pipeline's own rules, then the library's)."""
        return check_settings(self)

    def solve_settings(self) -> dict:
        """The keywords of :func:`slabopt.solve` (and :func:`slabopt.layer_budget`) for every layer:
        the budget (ratio or bits; both when both are set, for the library to refuse), rank, method,
        codes and positions, groups of L, the options."""
        budget = {} if self.bits is None else {"bits": self.bits}
        if self.ratio is not None or self.bits is None:
            budget["ratio"] = self.ratio
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
    """SHA-256 of a CPU tensor's bytes."""
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


def layer_seed(seed: int, block: int, j: int) -> int:
    """The solver seed of layer ``j`` of block ``block``: it depends on nothing else, so a resumed or
    distributed run solves every layer as one uninterrupted process does."""
    return seed + 1000 * block + j


# ------------------------------------------------------------------------------- solving
def _solve_layer(mod, st, b, j, name, cfg: CompressConfig, need_gram: bool):
    """Solve layer ``name`` (``j`` of block ``b``) from its input statistics ``st`` (``"sq"``, and
    ``"gram"`` when ``need_gram``); ``UserError`` when the solver refuses it or stores more bits
    than the budget allows."""
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
    """The manifest's record of a solved layer (``owner``: the layer whose input statistics it used)."""
    return {"block": b, "name": name, "shape": list(res.shape), "nnz": res.sparse.nnz, "rank": res.rank,
            "bits": int(res.bits), "ratio": res.ratio, "relative_error": res.relative_error,
            "objective": res.objective, "objective_full": res.objective_full, "n_iter": res.n_iter,
            "seconds": res.wall_time, "stats_from": owner}


def _log_line(e: dict) -> str:
    """One line of the layer log for a manifest record."""
    return (f"block {e['block']:3d} {e['name']:22s} {tuple(e['shape'])!s:12s} ratio {e['ratio']:.4f} "
            f"rel.err {e['relative_error']:.4g} iters {e['n_iter']} {e['seconds']:.2f}s")


# ---------------------------------------------------------------------------- the folder
def _new_manifest(settings: dict, source: dict, model) -> dict:
    """The manifest of a new folder: no block done yet."""
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


def check_layer_settings(model: torch.nn.Module, cfg: CompressConfig) -> None:
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
    """Full names of the layers to compress; ``UserError`` when there is none."""
    names = set()
    for b, block in enumerate(decoder_layers(model)):
        prefix = block_prefix(model, b)
        names |= {prefix + n for n in block_linears(block, prefix, cfg.targets, cfg.ignore)}
    if not names:
        raise UserError(f"no linear layer of {type(model).__name__}'s decoder blocks matches targets "
                        f"{cfg.targets!r} and not ignore {cfg.ignore!r} (slabopt compresses "
                        "torch.nn.Linear layers)")
    return names


# --------------------------------------------------------------------------------- the run
@dataclass
class BlockWork:
    """Decoder block ``index`` while it is compressed: its module (on the compute device from
    :meth:`CompressionRun.onload` to :meth:`CompressionRun.propagate`), the names of its target
    layers, the rank that solves each, the settings with the block's ratio, and its log entries."""

    index: int
    module: torch.nn.Module
    names: list[str]
    ranks: list[int]
    cfg: CompressConfig
    dtype: torch.dtype  # the block's compute dtype
    started: float  # time.perf_counter() when the block was loaded
    entries: dict[int, dict] = field(default_factory=dict)  # layer j's log entry
    dense: list[torch.Tensor] | None = None  # the dense block's outputs: the refinement's targets

    def linears(self) -> dict[str, torch.nn.Module]:
        """The target layers by name, as they are in the block now."""
        return {name: self.module.get_submodule(name) for name in self.names}

    def log_entries(self) -> list[dict]:
        """The layers' log entries in the block's order."""
        return [self.entries[j] for j in range(len(self.names))]


@dataclass
class CompressionRun:
    """One compression of ``model`` into ``out_dir``: the settings, the process group, the output
    folder and the calibration state that :func:`compress_model`'s block loop reads and advances.

    ``inputs`` are this rank's hidden states entering the next block to compress, one tensor per
    calibration window (on the CPU); ``calls[b]`` the other arguments block b gets for each of them.
    Only rank 0 holds the folder (``ck``), logs and shows progress.
    """

    model: torch.nn.Module
    cfg: CompressConfig
    device: torch.device
    dist: Dist
    out_dir: Path
    need_gram: bool = False  # the solver takes XᵀX, not only the column norms
    source_dir: Path | None = None  # the source checkpoint folder: hashed, its config copied
    log: Callable[[str], None] | None = None
    progress: bool = True
    keep_in_memory: bool = True  # else each block goes to the meta device once it is on disk
    on_block_done: Callable[[int], None] | None = None
    ck: Checkpoint | None = None
    targets: set[str] = field(default_factory=set)  # full names of the layers compressed
    start: int = 0  # the first block this run compresses
    inputs: list[torch.Tensor] = field(default_factory=list)
    calls: list[list] = field(default_factory=list)
    ratios: list[float | None] = field(default_factory=list)  # each block's ratio
    bar: Any = None  # the progress bar while the blocks run

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The model's decoder blocks."""
        return decoder_layers(self.model)

    @property
    def num_blocks(self) -> int:
        """The number of decoder blocks."""
        return len(self.layers)

    # ------------------------------------------------------------------- before the blocks
    def prepare(self, windows: torch.Tensor, text: str | None, source: dict | None, resume: bool,
                overwrite: bool) -> None:
        """Check the settings against the model's layers and the launch, then open the output
        folder on rank 0: a new one, a replaced one, or the earlier run to resume."""
        record = self.cfg.record(windows, text, next(self.model.parameters()).dtype)
        self.targets = _target_names(self.model, self.cfg)
        check_layer_settings(self.model, self.cfg)
        self._check_launch(windows)
        if self.dist.main:
            check_output(self.out_dir, resume=resume, overwrite=overwrite)  # fail before the costly hashing
            weights = None if self.source_dir else self.model.state_dict()
            src = dict(source or {}, files=source_fingerprint(self.source_dir, weights))
            self.ck = open_output(self.out_dir, record, src, self.model, resume=resume, overwrite=overwrite)

    def _check_launch(self, windows: torch.Tensor) -> None:
        """``UserError`` for settings that a torchrun launch of this size cannot run."""
        d = self.dist
        if (self.cfg.refine_steps or self.cfg.allocation != "uniform") and d.active:
            raise UserError("--refine-steps and --allocation owl run in one process only; start compress "
                            "without torchrun")
        if d.data_parallel and d.active and windows.shape[0] < d.world:
            raise UserError(f"--data-parallel needs at least one calibration window per process: "
                            f"{windows.shape[0]} windows for {d.world} processes")

    def already_complete(self) -> bool:
        """Whether the folder is finished already (said once); else where this run starts."""
        mine = self.ck and {k: self.ck.manifest[k] for k in ("complete", "next_block")}
        state = self.dist.broadcast_object(mine)
        self.start = int(state["next_block"])
        if state["complete"] and self.dist.main:
            console.notice(f"{self.out_dir} is already complete; nothing to do")
        return bool(state["complete"])

    def calibrate(self, windows: torch.Tensor) -> None:
        """Record what each block is called with, set each block's ratio (from block 0's inputs, also
        on resume), take this rank's inputs of the first block to compress (read back from the
        folder on resume) and write the weights that are not compressed (a new folder)."""
        hidden, calls = capture_calls(self.model, windows)
        share = self.dist.share(len(hidden))
        self.calls = [c[share] for c in calls]
        self.ratios = self._block_ratios(hidden)
        self.inputs = self._restore(hidden)
        with self.dist.step():
            if self.dist.main and self.start == 0 and REST not in self.ck.files:
                save_rest(self.ck, self.model, self.source_dir, self.targets,
                          self.cfg.rest_dtype or source_dtype(self.source_dir))
            elif self.dist.main:
                console.notice(f"resuming {self.out_dir} at block {self.start} of {self.num_blocks}")

    def _block_ratios(self, hidden: list[torch.Tensor]) -> list[float | None]:
        """Each block's ratio: the configured one everywhere, or OWL's allocation (a dense pass)."""
        cfg = self.cfg
        if cfg.allocation == "uniform":
            return [cfg.ratio] * self.num_blocks
        outliers = allocation.dense_outlier_ratios(self.model, hidden, self.calls, self.device, cfg.targets,
                                                   cfg.ignore)
        sizes = [sum(m.weight.numel() for m in block_linears(blk, block_prefix(self.model, b), cfg.targets,
                                                             cfg.ignore).values())
                 for b, blk in enumerate(self.layers)]
        try:
            ratios = allocation.block_ratios(outliers, sizes, cfg.ratio)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.log:
            self.log("OWL block ratios: " + " ".join(f"{r:.4f}" for r in ratios))
        return ratios

    def _restore(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        """Load the blocks an earlier run finished (or drop them); return this rank's inputs of the
        next block (rank 0 reads them and sends each rank its share)."""
        d, layers = self.dist, self.layers
        dtype = next(self.model.parameters()).dtype
        with d.step():
            for b in range(self.start):
                if self.keep_in_memory:
                    load_block(layers[b], self.out_dir, b, dtype)  # other ranks: needs a shared filesystem
                else:
                    layers[b].to("meta")
            if self.start in (0, len(layers)):  # nothing left to run: no inputs were saved
                return hidden[d.share(len(hidden))]
            full = None
            if d.main:
                state, _ = read_tensors(self.out_dir / resume_file(self.start))
                full = [state[f"input_{i}"] for i in range(len(hidden))]
        return d.scatter_inputs(full, len(hidden))

    @contextmanager
    def progress_bar(self) -> Iterator[None]:
        """One progress bar over the blocks left, closed however the loop ends."""
        budget = self.cfg.pattern if self.cfg.ratio is None else f"r={self.cfg.ratio}"
        self.bar = console.progress_bar(total=self.num_blocks, initial=self.start, unit="block",
                                        desc=f"{self.cfg.method} {budget}", enabled=self.progress)
        try:
            yield
        finally:
            self.bar.close()

    # ------------------------------------------------------------------------ one block
    def onload(self, b: int) -> BlockWork:
        """Block ``b`` moved to the compute device, with its target layers, the rank that solves each
        and its ratio."""
        started = time.perf_counter()
        module = self.layers[b].to(self.device)
        cfg = replace(self.cfg, ratio=self.ratios[b])
        lin = block_linears(module, block_prefix(self.model, b), cfg.targets, cfg.ignore)
        return BlockWork(b, module, list(lin), self._layer_ranks(lin), cfg, next(module.parameters()).dtype,
                         started)

    def _layer_ranks(self, lin: dict) -> list[int]:
        """The rank that solves each layer of ``lin`` (all rank 0 in one process)."""
        if not self.dist.active:
            return [0] * len(lin)
        iters = self.cfg.max_iter or 20
        costs = [distributed.layer_cost(tuple(m.weight.shape), self.cfg.rank, iters, self.need_gram)
                 for m in lin.values()]
        return distributed.assign_layers(costs, self.dist.world)

    def block_inputs(self, blk: BlockWork) -> BlockInputs:
        """This rank's windows entering block ``blk``, with the block's call arguments."""
        return BlockInputs(self.inputs, self.calls[blk.index], self.device)

    def keep_dense_outputs(self, blk: BlockWork) -> None:
        """With refinement: the dense block's outputs, the targets the compressed block is tuned to."""
        if self.cfg.refine_steps:
            with self.dist.step():
                blk.dense = block_outputs(blk.module, self.block_inputs(blk))

    def statistics(self, blk: BlockWork) -> tuple[dict[str, dict], dict[str, str]]:
        """Each target layer's input statistics over all the windows (summed over the ranks when
        they are shared out): ``(stats, owner)`` of :func:`.calibration.collect_stats`."""
        with self.dist.step():  # a failure here (out of memory) stops every rank, as in the solves
            stats, owner = collect_stats(blk.module, self.block_inputs(blk), blk.linears(), self.need_gram)
        self.dist.all_reduce_stats(stats, owner)
        return stats, owner

    def solve(self, blk: BlockWork, statistics: tuple[dict[str, dict], dict[str, str]]) -> None:
        """Solve the block's layers assigned to this rank from their input ``statistics`` and put the
        compressed layers in the block; their log entries go in ``blk.entries``."""
        stats, owner = statistics
        with self.dist.step():
            for j, name in enumerate(blk.names):
                if blk.ranks[j] != self.dist.rank:
                    continue
                self.bar.set_postfix_str(f"block {blk.index} {name} ({j + 1}/{len(blk.names)})", refresh=True)
                mod = blk.module.get_submodule(name)
                res = _solve_layer(mod, stats[name], blk.index, j, name, blk.cfg, self.need_gram)
                store = STORE_DTYPES[blk.cfg.value_bits]
                self._put_layer(blk, name, SLaBLinear.from_result(res, bias=mod.bias, store_dtype=store,
                                                                  compute_dtype=blk.dtype))
                blk.entries[j] = _log_entry(blk.index, name, res, owner[name])
                del res
                release_freed_memory()  # the solve's buffers go back to the system, not to the heap

    def _put_layer(self, blk: BlockWork, name: str, new: SLaBLinear) -> None:
        """``new`` in place of layer ``name``, on the device, its dense Ŵ cached for the block's
        calibration forward (faster on the CPU)."""
        new = new.to(self.device)
        new.set_cache_weight(True)
        set_module(blk.module, name, new)

    def share(self, blk: BlockWork) -> None:
        """Several ranks: every layer broadcast from the rank that solved it, so that all ranks end
        with the same compressed block and log entries."""
        if not self.dist.active:
            return
        for j, name in enumerate(blk.names):
            src = blk.ranks[j]
            mod = blk.module.get_submodule(name) if self.dist.rank == src else None
            state, shape, blk.entries[j] = self.dist.share_layer(mod, blk.entries.get(j), src, self.device)
            if self.dist.rank != src:
                self._put_layer(blk, name, SLaBLinear.empty_like_state(state, shape, compute_dtype=blk.dtype))

    def refine(self, blk: BlockWork) -> None:
        """With refinement: tune the compressed block towards the dense block's outputs
        (:func:`.refine.refine_block`); the block's loss before and after goes in each log entry."""
        if not self.cfg.refine_steps:
            return
        with self.dist.step():
            fit = refine_block(blk.module, self.block_inputs(blk), blk.dense, self.cfg.refine_steps)
        blk.dense = None
        for e in blk.entries.values():
            e["block_loss_before_refine"] = fit["loss_start"]
            e["block_loss_after_refine"] = fit["loss_end"]
        _cache_weights(blk.module, True)  # dense Ŵ again for the block's calibration forward

    def propagate(self, blk: BlockWork) -> None:
        """The compressed block's outputs, the next block's inputs (each rank runs a share of the
        windows, every rank gathers them all); the block goes back to the CPU."""
        part = self.dist.forward_share(len(self.inputs))
        with self.dist.step():
            outs = block_outputs(blk.module, self.block_inputs(blk).part(part))
        self.inputs = self.dist.all_gather_outputs(outs)
        del outs
        _cache_weights(blk.module, False)  # memory stays near one model
        blk.module.to("cpu")

    def commit(self, blk: BlockWork) -> None:
        """Write the block and the next block's inputs (rank 0), drop the block from memory without
        ``keep_in_memory``, log its layers and advance the progress bar."""
        full = self.dist.gather_inputs(self.inputs)  # rank 0: every window's inputs, to save for --resume
        entries = blk.log_entries()
        with self.dist.step():
            if self.dist.main:
                seconds = time.perf_counter() - blk.started
                _commit_block(self.ck, blk.index, blk.module, full, entries, seconds)
        del full
        if not self.keep_in_memory:
            blk.module.to("meta")  # on disk now: its memory goes back
        release_freed_memory()
        for e in entries:
            if self.dist.main:
                self.ck.log(_log_line(e))
            if self.log:
                self.log(_log_line(e))
        self.bar.update(1)
        if self.on_block_done is not None:
            self.on_block_done(blk.index)

    # ------------------------------------------------------------------------- the end
    def finish(self) -> dict:
        """Record the sizes and mark the folder complete (rank 0); the manifest on every rank."""
        with self.dist.step():
            if self.dist.main:
                man = self.ck.manifest
                man["sizes"] = size_report(self.out_dir, man["layers"])
                man["complete"] = True
                self.ck.save()
        return self.manifest()

    def manifest(self) -> dict:
        """Rank 0's manifest, on every rank."""
        return self.dist.broadcast_object(self.ck and self.ck.manifest)


def _cache_weights(block, on: bool) -> None:
    """Cache (or drop) the dense Ŵ of every compressed layer of ``block``."""
    for mod in block.modules():
        if isinstance(mod, SLaBLinear):
            mod.set_cache_weight(on)


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
    with d.step():
        cfg = CompressConfig(**settings) if config is None else replace(config, **settings)
        need_gram = cfg.check().needs_gram
        run = CompressionRun(model, cfg, resolve_device(device), d, Path(out_dir), need_gram=need_gram,
                             source_dir=source_dir, log=log if d.main else None, progress=progress and d.main,
                             keep_in_memory=keep_in_memory, on_block_done=on_block_done)
        run.prepare(windows, text, source, resume, overwrite)
    if run.already_complete():
        return run.manifest()
    run.calibrate(windows)
    with run.progress_bar():
        for b in range(run.start, run.num_blocks):
            blk = run.onload(b)  # onto the compute device
            run.keep_dense_outputs(blk)  # the refinement's targets
            run.solve(blk, run.statistics(blk))  # this rank's layers, from their inputs' statistics
            run.share(blk)  # every layer from the rank that solved it
            run.refine(blk)
            run.propagate(blk)  # the next block's inputs
            run.commit(blk)  # onto disk (rank 0), logged
    return run.finish()


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
        limit_heap_retention()  # freed buffers above 1 MiB go back to the system (see .heap)
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
                         progress=progress, log=log, source_dir=path, keep_in_memory=False, dist=d)
    man["wall_seconds_this_run"] = time.perf_counter() - t0
    return man
