"""``slabopt compress`` on several processes with ``torch.distributed``, launched by ``torchrun``.

One process per device (docs/distributed.md). torchrun's environment (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``) is detected by :func:`init`; the backend is Gloo for CPU tensors and NCCL for CUDA
tensors (``"cpu:gloo,cuda:nccl"`` when ``--device cuda``, each rank on ``cuda:LOCAL_RANK``).

- **Weight parallel** (always): the linear layers of a block are assigned to ranks by their cost
  (:func:`assign_layers`); each rank solves its own and broadcasts their buffers
  (:meth:`Dist.share_layer`), so every rank holds the whole compressed block before the next one.
  Every rank computes the block's input statistics over all windows (the same float sums as one
  process); the compressed block's outputs, one forward per window, are split over the ranks and
  gathered (:meth:`Dist.all_gather_outputs`), so the files are byte-identical to one process.
- **Data parallel calibration** (``--data-parallel``): each rank runs a contiguous share of the
  calibration windows through the block; the column sums of squares and Gram matrices are summed
  in float64 with ``all_reduce`` (:meth:`Dist.all_reduce_stats`); rank 0 gathers the next block's
  inputs to write them for ``--resume`` (:meth:`Dist.gather_inputs`).
- **Failures**: the pipeline's steps run inside :meth:`Dist.step`, which ends with an all-reduced
  error flag. The lowest failing rank raises its own error (shown once); every other rank raises
  :class:`PeerFailed`, which the CLI turns into a silent non-zero exit. Every collective has the
  process group's timeout (``--dist-timeout``), so a rank that vanishes cannot hang the others.

A process started without torchrun (``WORLD_SIZE`` unset or 1) gets :data:`SINGLE`, whose methods
do nothing: the single-process pipeline is unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import UserError

DEFAULT_TIMEOUT = 1800  # seconds any rank waits in a collective for the others


class PeerFailed(Exception):
    """Another rank failed (its error is shown by that rank); this one stops too."""


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the run: its rank, the number of ranks, the calibration mode."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    data_parallel: bool = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the output folder, logs and prints."""
        return self.rank == 0

    # ------------------------------------------------------------------ failures
    @contextmanager
    def step(self) -> Iterator[None]:
        """Run a step of the pipeline; afterwards every rank learns whether any rank failed in it.

        The lowest failing rank re-raises its own exception; the others raise :class:`PeerFailed`.
        ``KeyboardInterrupt`` and the like pass straight through (torchrun stops the others).
        """
        failure = None
        try:
            yield
        except Exception as exc:  # every error must reach the other ranks
            if not self.active:
                raise
            failure = exc
        if not self.active:
            return
        flag = torch.tensor([self.rank if failure is not None else self.world], dtype=torch.int64,
                            device="cpu")
        _dist().all_reduce(flag, op=_dist().ReduceOp.MIN)
        src = int(flag.item())
        if src == self.world:
            return
        msg = self.broadcast_object(None if failure is None else f"{type(failure).__name__}: {failure}", src)
        if self.rank == src:
            raise failure
        raise PeerFailed(f"rank {src} failed: {msg}")

    # --------------------------------------------------------------- collectives
    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every rank (pickled; for small things)."""
        if not self.active:
            return obj
        box = [obj]
        _dist().broadcast_object_list(box, src=src)
        return box[0]

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` calibration windows (all of them unless data-parallel)."""
        if not (self.active and self.data_parallel):
            return slice(0, n)
        lo, hi = window_bounds(n, self.world)[self.rank]
        return slice(lo, hi)

    def all_reduce_stats(self, stats: dict[str, dict], owner: dict[str, str]) -> None:
        """Sum each shared accumulator (``sq``, ``gram``) over the ranks, in float64, in place."""
        if not (self.active and self.data_parallel):
            return
        for name in dict.fromkeys(owner[n] for n in stats):  # each accumulator once, same order everywhere
            for key in sorted(stats[name]):
                t = stats[name][key]
                assert t.dtype == torch.float64
                _dist().all_reduce(t, op=_dist().ReduceOp.SUM)

    def share_layer(self, module: torch.nn.Module | None, entry: dict | None, src: int,
                    device: torch.device) -> tuple[dict[str, torch.Tensor], tuple[int, int], dict]:
        """Broadcast the buffers of a layer solved on rank ``src``: (state, shape, log entry) on every rank.

        The state's tensors are bit-for-bit those of ``module`` (sent as one byte buffer).
        """
        if self.rank == src:
            state = {k: v.detach() for k, v in module.state_dict().items()}
            header = ([(k, str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in state.items()],
                      (module.out_features, module.in_features), entry)
        else:
            header = None
        layout, shape, entry = self.broadcast_object(header, src)
        nbytes = [_nbytes(dt, sh) for _, dt, sh in layout]
        if self.rank == src:
            flat = torch.cat([state[k].contiguous().reshape(-1).view(torch.uint8).to(device)
                              for k, _, _ in layout])
        else:
            flat = torch.empty(sum(nbytes), dtype=torch.uint8, device=device)
        _dist().broadcast(flat, src=src)
        if self.rank == src:
            return state, shape, entry
        parts = torch.split(flat, nbytes)
        state = {k: p.view(getattr(torch, dt)).reshape(sh).clone()
                 for (k, dt, sh), p in zip(layout, parts, strict=True)}
        return state, shape, entry

    def forward_share(self, n: int) -> slice:
        """The windows this rank runs through a compressed block (each rank a contiguous share)."""
        if not self.active or self.data_parallel:
            return slice(0, n)  # data-parallel: the rank's own windows are all it holds
        lo, hi = window_bounds(n, self.world)[self.rank]
        return slice(lo, hi)

    def all_gather_outputs(self, mine: list[torch.Tensor]) -> list[torch.Tensor]:
        """Weight parallel: every rank's :meth:`forward_share` of the block outputs, on every rank,
        in window order, bit-for-bit (each window's forward is the same computation on any rank)."""
        if not self.active or self.data_parallel:
            return mine
        layouts = [None] * self.world
        _dist().all_gather_object(layouts, _layout(mine))
        out = []
        for src in range(self.world):
            nbytes = [_nbytes(dt, sh) for dt, sh in layouts[src]]
            if not nbytes:
                continue
            if src == self.rank:
                flat = torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in mine])
            else:
                flat = torch.empty(sum(nbytes), dtype=torch.uint8, device="cpu")  # outputs stay on the CPU
            _dist().broadcast(flat, src=src)
            if src == self.rank:
                out.extend(mine)
                continue
            out.extend(p.view(getattr(torch, dt)).reshape(sh)
                       for (dt, sh), p in zip(layouts[src], torch.split(flat, nbytes), strict=True))
        return out

    def gather_inputs(self, mine: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """All ranks' shares of the next block's inputs, in window order, on rank 0 (else ``None``).

        Only data-parallel runs have shares; otherwise every rank already holds them all.
        """
        if not (self.active and self.data_parallel):
            return mine
        layouts = [None] * self.world
        _dist().all_gather_object(layouts, _layout(mine))
        if not self.main:
            for t in mine:
                _dist().send(t.contiguous().reshape(-1).view(torch.uint8), dst=0)
            return None
        out = list(mine)
        for src in range(1, self.world):
            for dt, sh in layouts[src]:
                buf = torch.empty(_nbytes(dt, sh), dtype=torch.uint8, device="cpu")  # inputs: CPU
                _dist().recv(buf, src=src)
                out.append(buf.view(getattr(torch, dt)).reshape(sh))
        return out

    def scatter_inputs(self, full: list[torch.Tensor] | None, n: int) -> list[torch.Tensor]:
        """Rank 0's ``n`` saved inputs (read on ``--resume``): each rank gets its share of them."""
        if not self.active:
            return full
        layout = self.broadcast_object(
            _layout(full) if self.main else None)
        mine = []
        for r in range(self.world):
            part = range(n)[_share_of(n, self.world, r, self.data_parallel)]
            for i in part:
                if self.main and r == 0:
                    mine.append(full[i])
                elif self.main:
                    _dist().send(full[i].contiguous().reshape(-1).view(torch.uint8), dst=r)
                elif r == self.rank:
                    dt, sh = layout[i]
                    buf = torch.empty(_nbytes(dt, sh), dtype=torch.uint8, device="cpu")
                    _dist().recv(buf, src=0)
                    mine.append(buf.view(getattr(torch, dt)).reshape(sh))
        return mine


SINGLE = Dist()
_current: Dist = SINGLE


def _dist():
    import torch.distributed as dist

    return dist


def _layout(tensors: list[torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(str(t.dtype).removeprefix("torch."), tuple(t.shape)) for t in tensors]


def _nbytes(dtype: str, shape: Sequence[int]) -> int:
    n = getattr(torch, dtype).itemsize
    for s in shape:
        n *= s
    return n


def window_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) of ``n`` windows for each of ``world`` ranks, sizes differing by ≤ 1."""
    counts = [n // world + (r < n % world) for r in range(world)]
    starts = [sum(counts[:r]) for r in range(world)]
    return [(s, s + c) for s, c in zip(starts, counts, strict=True)]


def _share_of(n: int, world: int, rank: int, data_parallel: bool) -> slice:
    return slice(*window_bounds(n, world)[rank]) if data_parallel else slice(0, n)


def layer_cost(shape: tuple[int, int], rank: int, iterations: int, needs_gram: bool) -> float:
    """Relative cost of solving an m×n layer: each iteration touches m·n entries (and the rank-r
    factors), a Gram-based solver also factors the n×n Gram matrix once."""
    m, n = shape
    return float(m) * n * iterations * (1 + rank) + (float(n) ** 3 if needs_gram else 0.0)


def assign_layers(costs: Sequence[float], world: int) -> list[int]:
    """The rank that solves each layer: largest cost first to the least loaded rank (LPT).

    Deterministic (ties go to the lower index and the lower rank), so every rank computes the same.
    """
    load = [0.0] * world
    owner = [0] * len(costs)
    for j in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[j] = r
        load[r] += costs[j]
    return owner


def env_rank() -> int:
    """``RANK`` from torchrun's environment (0 without torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def launched() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def compute_device(device: str | None) -> str | None:
    """``cuda``/``auto`` with CUDA present → ``cuda:LOCAL_RANK`` for a distributed run; else as given."""
    if not launched() or device is None:
        return device
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else device


def init(device: str | None, *, data_parallel: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Dist:
    """Join torchrun's process group (when launched by it) and return this process's :class:`Dist`.

    Without torchrun: :data:`SINGLE` (``data_parallel`` has nothing to split).
    """
    global _current
    if not launched():
        return SINGLE
    dist = _dist()
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run without torchrun")
    dev = torch.device(compute_device(device) or "cpu")
    backend = "gloo"
    if dev.type == "cuda":
        if not torch.cuda.is_available() or dev.index >= torch.cuda.device_count():
            raise UserError(f"rank {env_rank()} needs {dev} but this node has {torch.cuda.device_count()} "
                            "CUDA devices; start at most that many processes per node")
        torch.cuda.set_device(dev)
        backend = "cpu:gloo,cuda:nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout))
    _current = Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), data_parallel=data_parallel)
    return _current


def current() -> Dist:
    """The :class:`Dist` set by :func:`init` (``SINGLE`` before, and without torchrun)."""
    return _current


def shutdown() -> None:
    """Leave the process group (a no-op without one)."""
    global _current
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE
