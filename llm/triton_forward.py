"""Triton forward of a compressed layer on the GPU, straight from its packed parts.

For the rows x of X (1 to ``MAX_ROWS`` of them per launch) the kernel computes

    y = S x + Σ_k u_k ⊙ (B (v_k ⊙ x)) + c·(Σ_j x_j) + bias  =  Ŵ x + bias,
    Ŵ = S + (U Vᵀ) ⊙ B + c·1ᵀ,

reading what :class:`.slablinear.SLaBLinear` stores: the bitmask of S (m×⌈n/8⌉ bytes, most
significant bit first; N:M or Rice-coded positions are decoded once into such a bitmask, as the
numba kernel's ``_Packed`` does), the kept values in their storage format (float16, bfloat16,
float32 in row-major order, or q-bit two's-complement codes packed row by row with one scale σ_i
per row: S_ij = σ_i·t_ij), the packed sign bits of B (bit 1 = +1), U and V in their stored dtype
(with ``l_group``, column j uses U's factors of its group g(j) = ⌊j/G⌋), c and the bias.

One program per block of ``BLOCK_M`` output rows; it walks the columns ``BLOCK_N`` at a time,
unpacks the tile's mask and sign bits, finds each kept entry's place among its row's values from
the row's start (``rowptr``, m + 1 integers built once) plus the mask bits before it (a running
count per row carried from tile to tile, plus a prefix sum inside the tile), rebuilds the tile of Ŵ
in float32 and multiplies it into X (``tl.dot`` in IEEE float32, no TF32). Nothing of size m×n is
formed in memory.

Tested in Triton's CPU interpreter (``TRITON_INTERPRET=1``, tests/test_llm_triton.py); the module
imports without triton (``HAVE_TRITON`` False) and is imported by ``SLaBLinear`` only for CUDA inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from slabopt import pack_signs

try:  # pragma: no cover - depends on the environment
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover
    HAVE_TRITON = False

MAX_ROWS = 64  # input rows up to which SLaBLinear.forward takes this kernel (more: the dense rebuild)
MAX_RANK = 4  # factors r per column (V's columns); with l_group U holds r per group
BLOCK_M = 32  # output rows per program
BLOCK_N = 64  # columns per tile


@dataclass
class TritonParts:
    """What the kernel reads, all on the layer's device: ``mask`` (m×⌈n/8⌉ uint8), ``values`` (the
    stored buffer: nnz floats, or m×row_bytes packed q-bit codes), ``rowptr`` (m + 1 int64, float
    values only), ``scales`` (σ, coded values only), ``signs`` (m×⌈n/8⌉ uint8), ``U`` (m×ldu), ``V``
    (n×rank), ``offset`` (c), ``bias``; absent parts are ``None``."""

    m: int
    n: int
    rank: int
    ldu: int
    group: int | None
    qbits: int
    row_bytes: int
    mask: torch.Tensor | None
    values: torch.Tensor | None
    rowptr: torch.Tensor | None
    scales: torch.Tensor | None
    signs: torch.Tensor | None
    U: torch.Tensor | None
    V: torch.Tensor | None
    offset: torch.Tensor | None
    bias: torch.Tensor | None


def supported(mod) -> bool:
    """Whether the kernel can compute the layer ``mod`` (a :class:`.slablinear.SLaBLinear`): triton
    installed, no two-level codes or quantised part, at most ``MAX_RANK`` factors per column, values
    stored as float16/bfloat16/float32 or as codes. The device is not checked here."""
    rank = 0 if mod.V is None else int(mod.V.shape[1])
    return (HAVE_TRITON and mod.levels is None and not mod.has_quant and rank <= MAX_RANK
            and (mod.values.dtype in (torch.float16, torch.bfloat16, torch.float32)
                 or hasattr(mod, "value_layout")))


def _row_pointers(mask: torch.Tensor, n: int) -> torch.Tensor:
    """(m + 1, int64): where each row's kept values start, from the bits of the first n columns of
    each mask row (padding bits beyond column n are not counted)."""
    counts = torch.zeros(mask.shape[0], dtype=torch.int64, device=mask.device)
    for t in range(8):
        counts += ((mask >> t) & 1).sum(1)
    if n % 8:
        pad = mask[:, -1]
        for t in range(8 - n % 8):
            counts -= ((pad >> t) & 1).to(torch.int64)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _sparse_mask(mod) -> torch.Tensor:
    """The bitmask of S (m×⌈n/8⌉ uint8, contiguous): the stored ``mask``, or the N:M or Rice-coded
    positions decoded once into one on the layer's device."""
    mask = mod.mask if hasattr(mod, "mask") else pack_signs(mod.positions()).to(mod.values.device)
    return mask.contiguous()


def _sparse_parts(mod) -> dict:
    """The kernel's arrays of S for ``mod``: ``mask``, ``values``, ``rowptr`` (float values only),
    ``scales`` (coded values only), ``qbits`` and ``row_bytes`` (0 for float values); the arrays are
    ``None`` when nothing is kept. Coded values must keep the same k entries in every row."""
    n = mod.in_features
    has_s = mod.nnz > 0
    mask = _sparse_mask(mod) if has_s else None
    coded = hasattr(mod, "value_layout")
    qbits, k = (int(v) for v in mod.value_layout.tolist()) if coded else (0, 0)
    rowptr = _row_pointers(mask, n) if has_s else None
    if has_s and coded and not bool((rowptr.diff() == k).all()):
        raise ValueError(f"coded values need {k} kept entries in every row of the mask")
    return dict(
        qbits=qbits, row_bytes=int(mod.values.shape[1]) if coded else 0, mask=mask,
        values=mod.values.detach().contiguous() if has_s else None,
        rowptr=None if coded else rowptr,
        scales=mod.value_scales.detach() if coded and has_s else None)


def _lowrank_parts(mod) -> dict:
    """The kernel's arrays of (U Vᵀ) ⊙ B for ``mod``: ``rank``, ``ldu`` (U's columns), ``group``
    (G of ``l_group`` or ``None``), and ``signs``, ``U``, ``V`` (``None`` without factors)."""
    rank = 0 if mod.V is None else int(mod.V.shape[1])
    return dict(
        rank=rank, ldu=0 if mod.U is None else int(mod.U.shape[1]),
        group=int(mod.l_group[0]) if hasattr(mod, "l_group") else None,
        signs=mod.signs.detach().contiguous() if mod.signs is not None and rank else None,
        U=mod.U.detach().contiguous() if rank else None, V=mod.V.detach().contiguous() if rank else None)


def prepare(mod) -> TritonParts:
    """The kernel's arrays for the :func:`supported` layer ``mod``: views of its buffers, plus the
    bitmask decoded once from N:M or Rice codes (1 bit per weight) and the row pointers."""
    return TritonParts(
        m=mod.out_features, n=mod.in_features, **_sparse_parts(mod), **_lowrank_parts(mod),
        offset=None if mod.row_offset is None else mod.row_offset.detach(),
        bias=None if mod.bias is None else mod.bias.detach())


def slab_forward(parts: TritonParts, x: torch.Tensor) -> torch.Tensor:
    """Y = X Ŵᵀ + bias (rows × m, float32) for the rows of ``x`` (rows × n), i.e. for each row x
    y = S x + Σ_k u_k ⊙ (B (v_k ⊙ x)) + c·Σ_j x_j + bias; one launch per ``MAX_ROWS`` rows."""
    X = x.detach().to(torch.float32).contiguous()
    Y = torch.empty(X.shape[0], parts.m, dtype=torch.float32, device=x.device)
    for b0 in range(0, X.shape[0], MAX_ROWS):
        _launch(parts, X[b0 : b0 + MAX_ROWS], Y[b0 : b0 + MAX_ROWS])
    return Y


def _launch(p: TritonParts, X: torch.Tensor, Y: torch.Tensor) -> None:
    """One launch of :func:`_slab_kernel` for at most ``MAX_ROWS`` rows of X into Y."""
    dummy = torch.zeros(1, dtype=torch.uint8, device=X.device)  # stands in for absent parts (never read)

    def ptr(t: torch.Tensor | None) -> torch.Tensor:
        return dummy if t is None else t

    rows = X.shape[0]
    grid = (triton.cdiv(p.m, BLOCK_M),)
    _slab_kernel[grid](
        X, Y, ptr(p.mask), ptr(p.values), ptr(p.rowptr), ptr(p.scales), ptr(p.signs), ptr(p.U), ptr(p.V),
        ptr(p.offset), ptr(p.bias), rows, p.m, p.n, (p.n + 7) // 8, p.row_bytes, p.ldu, p.group or p.n,
        BLOCK_B=max(16, triton.next_power_of_2(rows)), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, RANK=p.rank,
        QBITS=p.qbits, HAS_S=p.mask is not None, HAS_SIGNS=p.signs is not None,
        GROUPED=p.group is not None, HAS_OFFSET=p.offset is not None, HAS_BIAS=p.bias is not None)


if HAVE_TRITON:

    @triton.jit
    def _bits(PACKED, i, j, valid, nb):
        """The bits of the (rows i × columns j) tile of a packed m×⌈n/8⌉ bit matrix (most
        significant bit first) as int32 0/1, 0 outside ``valid``."""
        at = i[:, None].to(tl.int64) * nb + (j[None, :] >> 3)
        byte = tl.load(PACKED + at, mask=valid, other=0).to(tl.int32)
        return (byte >> (7 - (j[None, :] & 7))) & 1

    @triton.jit
    def _codes(VALS, i, t, keep, row_bytes, QBITS: tl.constexpr):
        """The signed q-bit codes t_ij = c − 2^(q−1) number ``t`` of rows i (row i's codes packed
        most significant bit first from byte i·row_bytes on), as float32: the code is bits
        16 − o − q … 16 − o of the 16-bit word of its first byte and the next (o = bit offset)."""
        pos = t * QBITS
        at = i[:, None].to(tl.int64) * row_bytes + (pos >> 3)
        hi = tl.load(VALS + at, mask=keep, other=0).to(tl.int32)
        spills = keep & ((pos & 7) + QBITS > 8)  # the code's last bits are in the next byte of its row
        lo = tl.load(VALS + at + 1, mask=spills, other=0).to(tl.int32)
        code = (((hi << 8) | lo) >> (16 - (pos & 7) - QBITS)) & ((1 << QBITS) - 1)
        return (code - ((code >> (QBITS - 1)) << QBITS)).to(tl.float32)

    @triton.jit
    def _sparse_tile(MASK, VALS, start, scale, seen, i, j, valid, nb, row_bytes, QBITS: tl.constexpr):
        """(S_ij on the tile: the value, or σ_i·t_ij for coded values; the updated count of kept
        entries of each row left of the next tile). Entry (i, j)'s place among row i's values:
        ``seen`` (kept entries left of the tile) + the mask bits left of j in the tile."""
        bits = _bits(MASK, i, j, valid, nb)
        keep = bits != 0
        t = seen[:, None] + tl.cumsum(bits, axis=1) - bits
        if QBITS == 0:
            s = tl.load(VALS + (start[:, None] + t), mask=keep, other=0.0).to(tl.float32)
        else:
            s = _codes(VALS, i, t, keep, row_bytes, QBITS) * scale[:, None]
        return tl.where(keep, s, 0.0), seen + tl.sum(bits, axis=1)

    @triton.jit
    def _lowrank_tile(SIGNS, U, V, i, j, in_m, valid, n, nb, ldu, group, RANK: tl.constexpr,
                      HAS_SIGNS: tl.constexpr, GROUPED: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr):
        """(U Vᵀ) ⊙ B on the tile: Σ_k U[i, g(j)·r + k]·V[j, k] (g(j) = ⌊j/G⌋ with ``l_group``, else
        0), negated where the sign bit is 0 (B_ij = −1); B = 1 without signs."""
        lr = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in tl.static_range(RANK):
            v = tl.load(V + j * RANK + k, mask=j < n, other=0.0).to(tl.float32)
            if GROUPED:
                at = i[:, None] * ldu + (j[None, :] // group) * RANK + k
                u = tl.load(U + at, mask=valid, other=0.0).to(tl.float32)
            else:
                u = tl.load(U + i * ldu + k, mask=in_m, other=0.0).to(tl.float32)[:, None]
            lr += u * v[None, :]
        if HAS_SIGNS:
            lr = tl.where(_bits(SIGNS, i, j, valid, nb) != 0, lr, -lr)
        return lr

    @triton.jit
    def _slab_kernel(X, Y, MASK, VALS, ROWPTR, SCALES, SIGNS, U, V, OFFSET, BIAS,
                     rows, m, n, nb, row_bytes, ldu, group,
                     BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     RANK: tl.constexpr, QBITS: tl.constexpr, HAS_S: tl.constexpr,
                     HAS_SIGNS: tl.constexpr, GROUPED: tl.constexpr, HAS_OFFSET: tl.constexpr,
                     HAS_BIAS: tl.constexpr):
        """Y[b, i] = Σ_j Ŵ_ij X[b, j] + bias_i, Ŵ = S + (U Vᵀ) ⊙ B + c·1ᵀ, for this program's BLOCK_M
        rows i and the ``rows`` rows b of X (≤ BLOCK_B): Ŵ is rebuilt one BLOCK_M×BLOCK_N tile at a
        time in float32 and multiplied into X. ``QBITS`` 0: float values at ROWPTR[i] + place;
        else q-bit codes times the row scale σ_i."""
        i = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        in_m = i < m
        b = tl.arange(0, BLOCK_B)
        start = tl.zeros([BLOCK_M], dtype=tl.int64)
        scale = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
        c = tl.zeros([BLOCK_M], dtype=tl.float32)
        if HAS_S and QBITS == 0:
            start = tl.load(ROWPTR + i, mask=in_m, other=0)
        if HAS_S and QBITS > 0:
            scale = tl.load(SCALES + i, mask=in_m, other=0.0).to(tl.float32)
        if HAS_OFFSET:
            c = tl.load(OFFSET + i, mask=in_m, other=0.0).to(tl.float32)
        seen = tl.zeros([BLOCK_M], dtype=tl.int32)
        acc = tl.zeros([BLOCK_B, BLOCK_M], dtype=tl.float32)
        for j0 in range(0, n, BLOCK_N):
            j = j0 + tl.arange(0, BLOCK_N)
            valid = in_m[:, None] & (j < n)[None, :]
            w = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32) + c[:, None]  # c·1ᵀ (x is 0 beyond n)
            if HAS_S:
                s, seen = _sparse_tile(MASK, VALS, start, scale, seen, i, j, valid, nb, row_bytes, QBITS)
                w += s
            if RANK > 0:
                w += _lowrank_tile(SIGNS, U, V, i, j, in_m, valid, n, nb, ldu, group, RANK, HAS_SIGNS,
                                   GROUPED, BLOCK_M, BLOCK_N)
            xmask = (b < rows)[:, None] & (j < n)[None, :]
            x = tl.load(X + b[:, None] * n + j[None, :], mask=xmask, other=0.0)
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        if HAS_BIAS:
            acc += tl.load(BIAS + i, mask=in_m, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + b[:, None] * m + i[None, :], acc, mask=(b < rows)[:, None] & in_m[None, :])
