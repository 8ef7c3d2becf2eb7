"""``SLaBLinear``: a linear layer stored as Ŵ = S + (U Vᵀ) ⊙ B in compact form.

Stored (all as buffers, so ``state_dict`` / safetensors hold exactly what is on disk):

- S as ``values`` (nnz, 16-bit floats by default, row-major order) and its pattern as a bitmask
  ``mask`` (m×⌈n/8⌉ uint8, 1 bit per entry), or for an N:M pattern as one combination code per
  group (``nm_codes``, ⌈log₂ C(M, N)⌉ bits per M entries, with ``nm`` = [N, M]; see
  :mod:`.nm_codes`) -- either cheaper on disk than 16-bit column indices whenever
  more than 1/16 of the entries are kept); with coded values (``sparse_bits`` = q) ``values`` holds
  the k kept values of each row as signed q-bit integers t = c − 2^(q−1) in two's complement, packed
  row by row (m×⌈k·q/8⌉ uint8; for q = 8 simply one int8 per value), with one scale per row
  ``value_scales`` (float16, float32 for 32-bit models) and ``value_layout`` = [q, k]: value =
  scale·t (docs/formulation.md §4.7); CSR index arrays (int64) are built only when the factored
  forward first needs them (``_csr``, not saved),
  With Rice-coded positions (``positions="rice"``, docs/formulation.md §4.8) the pattern is stored
  as the Rice codes of the gaps of each row instead (``rice``, uint8, ⌈bits/8⌉ bytes; every row keeps
  k = nnz/m), decoded into a bitmask when the layer is loaded for the kernels,
- ``U`` (m×r) and ``V`` (n×r) in the same 16-bit dtype; with L per group of G input columns
  (``l_group`` = [G], docs/formulation.md §2.5) U is m×(r·⌈n/G⌉) and V holds each column's r
  factors (n×r), expanded to the n×(r·⌈n/G⌉) block-structured V of L = U Vᵀ by :meth:`factors`,
- ``signs`` (m×⌈n/8⌉ uint8): B packed 8 per byte, most significant bit first, bit 1 = +1,
- optional two-level codes ``levels`` (2×m: low, high), a per-row offset ``row_offset`` (m) and
  ``bias`` (m),
- a quantised part: integer codes (``q_codes``, ``q_scales``, ...) or a binarized one (methods
  billm and arb: the child module ``binarized``, its planes packed 1 bit per entry, see
  :mod:`.binarized_parts`), added to Ŵ by its ``dequantize``.

The dense Ŵ is built by :func:`slabopt.dense_weight`, the one definition of Ŵ from its parts,
and B by :func:`slabopt.unpack_signs`.

Forward, y = Ŵ x + bias = S x + Σ_k u_k ⊙ (B (v_k ⊙ x)) + c·Σ_j x_j + bias, by one of:

- where numba is installed and the layout allows (rank ≤ ``fused.MAX_RANK``, no two-level codes,
  no quantised part, on the CPU), from the packed parts (:mod:`.fused`; N:M codes are decoded once
  into a bitmask, 1 bit per weight in memory): for up to
  ``fused.max_rows(m, n)`` input rows (2 or 4) the fused kernel, with no m×n temporary and no
  column index; for more rows (prefill) Ŵ rebuilt a block of rows at a time, each block used in
  one matmul and dropped. Kept between calls: the row offsets into ``values`` (m + 1 integers) and
  float32 copies of U, V, c and the bias (r·(m + n) + 2m numbers);
- for inputs on CUDA, where triton is installed and the layout allows (as for the fused kernel, with
  at most ``triton_forward.MAX_RANK`` factors per column), up to ``triton_forward.MAX_ROWS`` input
  rows: the Triton kernel of :mod:`.triton_forward`, from the packed parts (tested in Triton's CPU
  interpreter only so far, see docs/gpu.md);
- otherwise the pure-torch reference (:meth:`SLaBLinear.reference_forward`): the dense Ŵ rebuilt
  for the call and one matmul (many rows, large rank, two-level codes, quantised parts), or the
  factored product with S as a CSR matrix whose int64 index is built for the call and dropped and
  B unpacked to ±1 for the call;
- with ``set_cache_weight(True)`` (a block's calibration forward during compression): the dense Ŵ
  built once and kept. Scoring (perplexity, zero-shot) turns it off (``evaluate.uncache_weights``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from slabopt import QuantizedMatrix, dense_weight, pack_signs, unpack_signs
from slabopt.binarized import BinarizedLayout, BinarizedMatrix
from slabopt.positions import rice_decode_mask, rice_encode
from slabopt.quantized import QuantLayout

from . import fused, nm_codes
from .binarized_parts import NAME as BINARIZED
from .binarized_parts import BinarizedParts, layout_from_state
from .bitpack import pack_uint, packed_width, unpack_uint

FACTORED_MAX_RANK = 4
FACTORED_MAX_ROWS = 64  # the torch reference rebuilds the dense Ŵ for more input rows than this
_CODE_VIEWS = {torch.float16: "uint16", torch.bfloat16: "int16"}  # 16-bit values as the kernel reads them

class SLaBLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` holding Ŵ = S + (U Vᵀ) ⊙ B compactly."""

    def __init__(self, in_features: int, out_features: int, *, nnz: int = 0, rank: int = 0,
                 has_signs: bool = False, has_levels: bool = False, has_offset: bool = False,
                 bias: bool = False, nm: tuple[int, int] | None = None, quant: QuantLayout | None = None,
                 value_codes: tuple[int, int] | None = None, store_dtype: torch.dtype = torch.float16,
                 compute_dtype: torch.dtype = torch.float32, l_group: int | None = None,
                 rice_bytes: int | None = None, device: torch.device | str = "cpu"):
        """Zero buffers of the given layout on ``device`` (the CPU: a layer is built on the host,
        filled, then moved; ``"meta"`` for shapes only, as :meth:`empty_like_state` does)."""
        super().__init__()
        m, n = out_features, in_features
        self.in_features, self.out_features = n, m
        self.compute_dtype = compute_dtype
        self.cache_weight = False  # keep the dense Ŵ after the first call (fast evaluation on CPU)
        self.use_fused = True  # the fused CPU (numba) or CUDA (Triton) kernel where it applies
        self._W: torch.Tensor | None = None
        self._packed: _Packed | bool | None = None  # the kernels' arrays; False: not supported
        self._triton = None  # the Triton kernel's arrays (triton_forward.TritonParts), built when first used
        if nnz:
            self._position_buffers(m, n, nm, rice_bytes, device)
        if value_codes is None:
            self.register_buffer("values", torch.zeros(nnz, dtype=store_dtype, device=device))
        else:
            self._code_buffers(m, *value_codes, store_dtype, device)
        self._factor_buffers(m, n, rank, l_group, store_dtype, device)
        self._row_buffers(m, n, has_signs, has_levels, has_offset, bias, store_dtype, device)
        if quant is not None:
            self._quant_buffers(quant, store_dtype, device)

    def _position_buffers(self, m: int, n: int, nm: tuple[int, int] | None, rice_bytes: int | None,
                          device) -> None:
        """Where S keeps entries: Rice codes (``rice``, ``rice_bytes`` bytes), the bitmask ``mask``
        (m×⌈n/8⌉ uint8), or for an N:M pattern ``nm`` = [N, M] and its codes ``nm_codes``."""
        if nm is None and rice_bytes is not None:
            self.register_buffer("rice", torch.zeros(rice_bytes, dtype=torch.uint8, device=device))
        elif nm is None:
            self.register_buffer("mask", torch.zeros(m, math.ceil(n / 8), dtype=torch.uint8, device=device))
        else:
            self.register_buffer("nm", torch.tensor(nm, dtype=torch.uint8, device=device))
            self.register_buffer("nm_codes", torch.zeros(nm_codes.packed_bytes(m, n, *nm), dtype=torch.uint8,
                                                         device=device))

    def _factor_buffers(self, m: int, n: int, rank: int, l_group: int | None, store_dtype: torch.dtype,
                        device) -> None:
        """The factors ``U`` (m×(r·groups)) and ``V`` (n×r), ``None`` for rank 0, and ``l_group`` = [G]
        when L is stored per group of G input columns."""
        groups = 1 if l_group is None else -(-n // l_group)
        self.register_buffer("U", torch.zeros(m, rank * groups, dtype=store_dtype, device=device)
                             if rank else None)
        self.register_buffer("V", torch.zeros(n, rank, dtype=store_dtype, device=device) if rank else None)
        if l_group is not None:
            self.register_buffer("l_group", torch.tensor([l_group], dtype=torch.int32, device=device))

    def _row_buffers(self, m: int, n: int, has_signs: bool, has_levels: bool, has_offset: bool, bias: bool,
                     store_dtype: torch.dtype, device) -> None:
        """The packed signs of B (``signs``, m×⌈n/8⌉ uint8), the two-level codes ``levels`` (2×m),
        ``row_offset`` (m) and ``bias`` (m); each ``None`` when not asked for."""
        self.register_buffer("signs", torch.zeros(m, math.ceil(n / 8), dtype=torch.uint8, device=device)
                             if has_signs else None)
        self.register_buffer("levels", torch.zeros(2, m, dtype=store_dtype, device=device)
                             if has_levels else None)
        self.register_buffer("row_offset", torch.zeros(m, dtype=store_dtype, device=device)
                             if has_offset else None)
        self.register_buffer("bias", torch.zeros(m, dtype=store_dtype, device=device) if bias else None)

    def _code_buffers(self, m: int, bits: int, k: int, store_dtype: torch.dtype, device) -> None:
        """Coded values of S: k codes of ``bits`` bits per row, a scale per row, the layout [q, k]."""
        self.register_buffer("value_layout", torch.tensor([bits, k], dtype=torch.int32, device=device))
        self.register_buffer("values", torch.zeros(m, packed_width(k, bits), dtype=torch.uint8,
                                                   device=device))
        scale_dtype = torch.float32 if store_dtype == torch.float32 else torch.float16
        self.register_buffer("value_scales", torch.zeros(m, dtype=scale_dtype, device=device))

    def _quant_buffers(self, q: QuantLayout | BinarizedLayout, store_dtype: torch.dtype, device) -> None:
        """Codes packed at ``bits`` bits, scales (and zero points) per row and group, the column
        group index packed at ⌈log₂ groups⌉ bits, and the layout itself (``q_layout``); a
        binarized part in the child module ``binarized`` (:mod:`.binarized_parts`)."""
        if isinstance(q, BinarizedLayout):
            self.add_module(BINARIZED, BinarizedParts(q, store_dtype, device=device))
            return
        m, n = q.shape
        self.register_buffer("q_layout", torch.tensor([q.bits, q.group_size or 0, q.symmetric,
                                                       q.group_index], dtype=torch.int32, device=device))
        self.register_buffer("q_codes", torch.zeros(m, packed_width(n, q.bits), dtype=torch.uint8,
                                                    device=device))
        self.register_buffer("q_scales", torch.zeros(m, q.n_groups, dtype=store_dtype, device=device))
        if not q.symmetric:
            self.register_buffer("q_zeros", torch.zeros(m, q.n_groups, dtype=store_dtype, device=device))
        if q.group_index:
            width = (q.n_groups - 1).bit_length()
            self.register_buffer("q_index", torch.zeros(1, packed_width(n, width), dtype=torch.uint8,
                                                         device=device))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_result(cls, res, bias: torch.Tensor | None = None, store_dtype: torch.dtype = torch.float16,
                    compute_dtype: torch.dtype = torch.float32) -> SLaBLinear:
        """Build from a :class:`slabopt.SolveResult` (torch arrays), casting values to ``store_dtype``."""
        m, n = res.shape
        pat = res.budget.pattern
        nm = (pat.n, pat.m) if pat.kind == "nm" and pat.m <= nm_codes.MAX_M else None
        rice = _rice_codes(res, n) if nm is None else None
        mod = cls(n, m, **_result_layout(res, nm, rice, bias is not None), store_dtype=store_dtype,
                  compute_dtype=compute_dtype)
        mod._store_sparse(res, nm, rice, store_dtype)
        mod._store_rows(res, bias, store_dtype)
        return mod

    def _store_sparse(self, res, nm: tuple[int, int] | None, rice: np.ndarray | None,
                      store_dtype: torch.dtype) -> None:
        """S of ``res`` (its positions, then its values or codes) and its quantised part, checking
        that the pattern holds as many entries as there are values."""
        sp, codes = res.sparse, res.sparse_codes
        if rice is not None:
            self.rice.copy_(torch.from_numpy(rice))
        elif sp.nnz:
            self._store_positions(sp, nm)
        if res.quant is not None:
            self._store_quant(res.quant, store_dtype)
        self.rebuild_index()
        if codes is None:
            self.values.copy_(torch.as_tensor(sp.values, device=self.values.device).to(store_dtype))
        else:
            self._store_codes(codes)

    def _store_rows(self, res, bias: torch.Tensor | None, store_dtype: torch.dtype) -> None:
        """The factors U and V, the packed signs, the two-level codes, the row offset and the bias
        of ``res`` (those it has), cast to ``store_dtype`` (signs to uint8)."""
        if res.rank:
            self.U.copy_(torch.as_tensor(res.U, device=self.U.device).to(store_dtype))
            self.V.copy_(self._own_factors(torch.as_tensor(res.V, device=self.V.device)).to(store_dtype))
        if res.signs_packed is not None:
            self.signs.copy_(torch.as_tensor(res.signs_packed, device=self.signs.device).to(torch.uint8))
        if res.levels is not None:
            self.levels.copy_(torch.as_tensor(res.levels, device=self.levels.device).to(store_dtype))
        if res.row_offset is not None:
            offset = torch.as_tensor(res.row_offset, device=self.row_offset.device)
            self.row_offset.copy_(offset.to(store_dtype))
        if bias is not None:
            self.bias.copy_(bias.detach().to(store_dtype))

    def _store_positions(self, sp, nm: tuple[int, int] | None) -> None:
        """The bitmask (or N:M codes) of the entries the CSR ``sp`` keeps, filled ``CODE_ROWS``
        rows at a time (no index of every kept entry at once)."""
        m, n = self.out_features, self.in_features
        indptr = torch.as_tensor(sp.indptr, device="cpu").to(torch.int64)  # host work, by design
        indices = torch.as_tensor(sp.indices, device="cpu")
        whole = None if nm is None else torch.zeros(m, n, dtype=torch.bool, device="cpu")
        for i0 in range(0, m, CODE_ROWS):
            i1 = min(m, i0 + CODE_ROWS)
            block = torch.zeros(i1 - i0, n, dtype=torch.bool, device="cpu") if whole is None else whole[i0:i1]
            rows = torch.repeat_interleave(torch.arange(i1 - i0, device="cpu"),
                                           indptr[i0 + 1 : i1 + 1] - indptr[i0:i1])
            block[rows, indices[int(indptr[i0]) : int(indptr[i1])].to(torch.int64)] = True
            if whole is None:
                self.mask[i0:i1] = pack_signs(block)
        if whole is not None:
            self.nm_codes.copy_(nm_codes.encode(whole, *nm))

    def _store_codes(self, codes: QuantizedMatrix) -> None:
        """The coded values as signed q-bit integers t = c − 2^(q−1), packed ``CODE_ROWS`` rows at a
        time, and their row scales."""
        c = torch.as_tensor(codes.codes, device="cpu")
        for i0 in range(0, c.shape[0], CODE_ROWS):
            twos = c[i0 : i0 + CODE_ROWS].to(torch.int64) ^ (1 << (codes.bits - 1))
            self.values[i0 : i0 + CODE_ROWS] = pack_uint(twos, codes.bits)
        self.value_scales.copy_(torch.as_tensor(codes.scales, device=self.value_scales.device).reshape(-1)
                                .to(self.value_scales.dtype))

    def _store_quant(self, q: QuantizedMatrix | BinarizedMatrix, store_dtype: torch.dtype) -> None:
        if isinstance(q, BinarizedMatrix):
            getattr(self, BINARIZED).store(q)
            return
        self.q_codes.copy_(pack_uint(torch.as_tensor(q.codes, device="cpu"), q.bits))
        self.q_scales.copy_(torch.as_tensor(q.scales, device=self.q_scales.device).to(store_dtype))
        if q.zeros is not None:
            self.q_zeros.copy_(torch.as_tensor(q.zeros, device=self.q_zeros.device).to(store_dtype))
        if q.group_index is not None:
            width = (q.layout.n_groups - 1).bit_length()
            self.q_index.copy_(pack_uint(torch.as_tensor(q.group_index, device="cpu").reshape(1, -1), width))

    @property
    def has_quant(self) -> bool:
        """Whether a quantised part is stored (integer codes or a binarized part)."""
        return hasattr(self, "q_codes") or hasattr(self, BINARIZED)

    def quant_matrix(self, dtype=None) -> QuantizedMatrix | BinarizedMatrix | None:
        """The stored quantised part as a :class:`slabopt.QuantizedMatrix` (scales in ``dtype``),
        or the binarized part as a :class:`slabopt.binarized.BinarizedMatrix` (values in ``dtype``)."""
        dtype = dtype or self.compute_dtype
        if hasattr(self, BINARIZED):
            return getattr(self, BINARIZED).matrix(dtype)
        if not hasattr(self, "q_codes"):
            return None
        bits, group, _sym, has_index = (int(v) for v in self.q_layout.tolist())
        n = self.in_features
        groups = self.q_scales.shape[1]
        index = None if not has_index else unpack_uint(self.q_index, n, (groups - 1).bit_length())[0]
        zeros = getattr(self, "q_zeros", None)
        return QuantizedMatrix(codes=unpack_uint(self.q_codes, n, bits).to(torch.uint8),
                               scales=self.q_scales.to(dtype),
                               zeros=None if zeros is None else zeros.to(dtype),
                               bits=bits, group_size=group or None, group_index=index)

    @staticmethod
    def _layout_of(state: dict[str, torch.Tensor],
                   shape: tuple[int, int]) -> QuantLayout | BinarizedLayout | None:
        if "q_layout" not in state:
            return layout_from_state(state, shape)
        bits, group, sym, has_index = (int(v) for v in state["q_layout"].tolist())
        return QuantLayout(shape, bits, group or None, bool(sym), bool(has_index))

    @classmethod
    def empty_like_state(cls, state: dict[str, torch.Tensor], shape: tuple[int, int],
                         compute_dtype: torch.dtype = torch.float32) -> SLaBLinear:
        """An instance whose buffers have the shapes/dtypes of a saved ``state`` (prefix stripped)."""
        m, n = shape
        U = state.get("U")
        with torch.device("meta"):  # no buffers to allocate and drop: the state's tensors are taken
            layout = state.get("value_layout")
            groups = state.get("l_group")
            mod = cls(n, m, nnz=state["values"].numel(), rank=0 if U is None else state["V"].shape[1],
                      l_group=None if groups is None else int(groups[0]),
                      rice_bytes=state["rice"].numel() if "rice" in state else None,
                      value_codes=None if layout is None else tuple(int(v) for v in layout.tolist()),
                      has_signs="signs" in state, has_levels="levels" in state,
                      has_offset="row_offset" in state, bias="bias" in state,
                      nm=tuple(state["nm"].tolist()) if "nm" in state else None,
                      quant=cls._layout_of(state, (m, n)),
                      store_dtype=state["values" if layout is None else "value_scales"].dtype,
                      compute_dtype=compute_dtype, device="meta")
        mod.load_state_dict(state, strict=True, assign=True)
        mod.rebuild_index()
        return mod

    def positions(self) -> torch.Tensor:
        """The m×n boolean pattern of S, from the bitmask or the N:M codes."""
        m, n = self.out_features, self.in_features
        if hasattr(self, "nm_codes"):
            return nm_codes.decode(self.nm_codes, m, n, *self.nm.tolist())
        if hasattr(self, "rice"):
            mask = rice_decode_mask(self.rice.cpu().numpy(), np.full(m, self.nnz // m), n)
            return torch.from_numpy(mask).to(self.values.device)
        if hasattr(self, "mask"):
            return unpack_signs(self.mask, n, torch.int8) > 0
        return torch.zeros(m, n, dtype=torch.bool, device=self.values.device)

    def rebuild_index(self) -> None:
        """Check that the stored pattern holds as many positions as there are values; forget what
        was derived from older buffers (the fused kernel's row offsets, a cached Ŵ)."""
        kept = (sum(int(self._mask_rows(rows).sum()) for rows in self._row_blocks())
                if hasattr(self, "mask") else int(self.positions().sum()))
        if kept != self.nnz:
            raise ValueError(f"mask holds {kept} entries but {self.nnz} values are stored")
        self._drop_derived()

    def _drop_derived(self) -> None:
        self._packed = None
        self._triton = None
        self._W = None

    def _apply(self, fn, recurse: bool = True):  # .to(), .half(), ...: derived arrays are stale
        self._drop_derived()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._drop_derived()
        super()._load_from_state_dict(*args, **kwargs)

    def csr_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(crow, col) of S in CSR form (row-major, ascending columns), int64; built on each call
        and not kept (8 bytes per kept weight)."""
        mask = self.positions()
        counts = mask.sum(1)
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int64)
        return crow, torch.nonzero(mask, as_tuple=True)[1].to(torch.int64)

    def _row_blocks(self) -> list[slice]:
        """Blocks of ``CODE_ROWS`` rows, in which S's bitmask and codes are unpacked."""
        m = self.out_features
        return [slice(i, min(i + CODE_ROWS, m)) for i in range(0, m, CODE_ROWS)]

    def _mask_rows(self, rows: slice) -> torch.Tensor:
        """The boolean pattern of ``rows`` from the bitmask (rows of :meth:`positions`)."""
        return unpack_signs(self.mask[rows], self.in_features, torch.int8) > 0

    def sparse_dense(self, dtype=None) -> torch.Tensor:
        """S as a dense m×n matrix (kept values in row-major order at the stored positions); from a
        bitmask filled ``CODE_ROWS`` rows at a time (no index of every kept entry at once)."""
        S = torch.zeros(self.out_features, self.in_features, dtype=dtype or self.compute_dtype,
                        device=self.values.device)
        if self.nnz and not hasattr(self, "mask"):
            S[self.positions()] = self.sparse_values(S.dtype)
        elif self.nnz:
            start = 0
            for rows in self._row_blocks():
                kept = self._mask_rows(rows)
                stop = start + int(kept.sum())
                S[rows][kept] = self._row_values(rows, start, stop, S.dtype)
                start = stop
        return S

    # ------------------------------------------------------------------ parts
    @property
    def rank(self) -> int:
        """Columns of U, i.e. of the factors L = U Vᵀ of :meth:`factors` (r·⌈n/G⌉ with groups)."""
        return 0 if self.U is None else int(self.U.shape[1])

    def _group_columns(self) -> torch.Tensor:
        """For each input column j, the first column of its group's factors: g(j)·r."""
        r = int(self.V.shape[1])
        return torch.arange(self.in_features, device=self.V.device) // int(self.l_group[0]) * r

    def _own_factors(self, V: torch.Tensor) -> torch.Tensor:
        """Each column's own r factors (n×r) from the block-structured n×(r·groups) V of a result."""
        if not hasattr(self, "l_group"):
            return V
        r = int(self.V.shape[1])
        at = self._group_columns().to(V.device)[:, None] + torch.arange(r, device=V.device)
        return torch.gather(V, 1, at)

    def factors(self, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, V) with L = U Vᵀ: with ``l_group`` V expanded to n×(r·groups), column j's factors in
        its group's r columns and zeros elsewhere."""
        dtype = dtype or self.compute_dtype
        U, V = self.U.to(dtype), self.V.to(dtype)
        if not hasattr(self, "l_group"):
            return U, V
        r = V.shape[1]
        full = torch.zeros(self.in_features, U.shape[1], dtype=dtype, device=V.device)
        at = self._group_columns()[:, None] + torch.arange(r, device=V.device)
        return U, full.scatter(1, at, V)

    @property
    def nnz(self) -> int:
        if hasattr(self, "value_layout"):
            return self.out_features * int(self.value_layout[1])
        return int(self.values.numel())

    def signed_codes(self, rows: slice = slice(None)) -> torch.Tensor:
        """The coded values of S of ``rows`` as signed integers t = c − 2^(q−1) (rows × k, int64)."""
        bits, k = (int(v) for v in self.value_layout.tolist())
        u = unpack_uint(self.values[rows], k, bits)
        return u - ((u >> (bits - 1)) << bits)  # two's complement: u ≥ 2^(q−1) stands for u − 2^q

    def sparse_values(self, dtype=None) -> torch.Tensor:
        """The kept values of S in row-major order (nnz), decoded when coded: scale_i·t_ij, ``CODE_ROWS``
        rows at a time."""
        dtype = dtype or self.compute_dtype
        if not hasattr(self, "value_layout"):
            return self.values.to(dtype)
        k = int(self.value_layout[1])
        out = torch.empty(self.out_features, k, dtype=dtype, device=self.values.device)
        for rows in self._row_blocks():
            out[rows] = self._row_values(rows, rows.start * k, rows.stop * k, dtype).reshape(out[rows].shape)
        return out.reshape(-1)

    def _row_values(self, rows: slice, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
        """The kept values of ``rows``, entries ``start:stop`` of :meth:`sparse_values`, in ``dtype``."""
        if not hasattr(self, "value_layout"):
            return self.values[start:stop].to(dtype)
        scales = self.value_scales[rows].to(dtype).reshape(-1, 1)
        return (scales * self.signed_codes(rows).to(dtype)).reshape(-1)

    def sparse_csr(self, dtype=None) -> torch.Tensor:
        dtype = dtype or self.compute_dtype
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            crow, col = self.csr_index()
            return torch.sparse_csr_tensor(crow, col, self.sparse_values(dtype),
                                           (self.out_features, self.in_features))

    def sign_matrix(self, dtype=None) -> torch.Tensor | None:
        if self.signs is None:
            return None
        return unpack_signs(self.signs, self.in_features, dtype or self.compute_dtype)

    def reconstruct(self, dtype=None) -> torch.Tensor:
        """The dense Ŵ (m×n) of the stored parts (for checks and the large-rank forward)."""
        dtype = dtype or self.compute_dtype

        def cast(t):
            return None if t is None else t.to(dtype)

        U, V = (None, None) if self.U is None else self.factors(dtype)
        return dense_weight(self.sparse_dense(dtype), U=U, V=V,
                            B=self.sign_matrix(dtype), levels=cast(self.levels),
                            row_offset=cast(self.row_offset), quant=self.quant_matrix(dtype))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = Ŵ x + bias for every row x of ``x`` (last axis ``in_features``); see the module
        docstring for which path computes it."""
        shape = x.shape
        xf = x.reshape(-1, self.in_features)
        if self.cache_weight:
            dt = self.compute_dtype
            if self._W is None or self._W.dtype != dt:
                self._W = self.reconstruct(dt)
            y = self._add_bias(xf.to(dt) @ self._W.T)
        elif self.triton_applies(xf):
            y = self.triton_forward(xf)
        elif self.fused_applies(xf):
            few = xf.shape[0] <= fused.max_rows(self.out_features, self.in_features)
            y = self.fused_forward(xf) if few else self.blocked_forward(xf)
        else:
            y = self.reference_forward(xf)
        y = y.reshape(*shape[:-1], self.out_features)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def reference_forward(self, xf: torch.Tensor) -> torch.Tensor:
        """The pure-torch forward of the rows of ``xf`` (rows × n) in ``compute_dtype``:
        x Ŵᵀ with Ŵ rebuilt for the call (many rows, large rank, two-level codes, quantised part),
        else S x + Σ_k u_k ⊙ (B (v_k ⊙ x)) + c·Σ_j x_j with S in CSR form and B unpacked to ±1, both
        for this call only; then + bias."""
        dt = self.compute_dtype
        xf = xf.to(dt)
        if (self.rank > FACTORED_MAX_RANK or self.levels is not None or self.has_quant
                or xf.shape[0] > FACTORED_MAX_ROWS):
            return self._add_bias(xf @ self.reconstruct(dt).T)
        y = (self.sparse_csr(dt) @ xf.T).T if self.nnz else xf.new_zeros(xf.shape[0], self.out_features)
        if self.rank:
            U, V = self.factors(dt)
            B = self.sign_matrix(dt)
            for k in range(self.rank):
                z = xf * V[:, k]
                z = z if B is None else z @ B.T
                y = y + z * U[:, k] if B is not None else y + z.sum(-1, keepdim=True) * U[:, k]
        if self.row_offset is not None:  # Ŵ += c·1ᵀ  ⇒  y += c·Σ_j x_j
            y = y + xf.sum(-1, keepdim=True) * self.row_offset.to(dt)
        return self._add_bias(y)

    def fused_supported(self) -> bool:
        """Whether the fused kernel can compute this layer (numba installed, no two-level codes or
        quantised part, rank ≤ ``fused.MAX_RANK``, on the CPU)."""
        return (fused.HAVE_NUMBA and self.levels is None
                and not self.has_quant and self.rank <= fused.MAX_RANK
                and self.values.device.type == "cpu"
                and (self.values.dtype in (torch.float16, torch.bfloat16, torch.float32)
                     or hasattr(self, "value_layout")))

    def fused_applies(self, xf: torch.Tensor) -> bool:
        """Whether :meth:`forward` takes the numba kernels for the rows ``xf`` (the fused one for at
        most ``fused.max_rows(m, n)`` rows, :meth:`blocked_forward` for more): enabled (``use_fused``),
        supported (:meth:`fused_supported`, mask padding bits clear), input on the CPU, no
        gradient wanted."""
        return (self.use_fused and xf.device.type == "cpu" and self._packed_parts() is not None
                and not (xf.requires_grad and torch.is_grad_enabled()))

    def triton_applies(self, xf: torch.Tensor) -> bool:
        """Whether :meth:`forward` takes the Triton kernel for the rows ``xf``: input on CUDA, at most
        ``triton_forward.MAX_ROWS`` rows, enabled (``use_fused``), no gradient wanted, triton installed
        and the layer :func:`.triton_forward.supported`."""
        if not (xf.is_cuda and self.use_fused and not (xf.requires_grad and torch.is_grad_enabled())):
            return False
        from . import triton_forward as tfw  # imported for CUDA inputs only: CPU runs never need triton

        return xf.shape[0] <= tfw.MAX_ROWS and tfw.supported(self)

    def triton_forward(self, xf: torch.Tensor) -> torch.Tensor:
        """y = S x + Σ_k u_k ⊙ (B (v_k ⊙ x)) + c·Σ_j x_j + bias for the rows x of ``xf`` by the Triton
        kernel (float32 result; see :func:`.triton_forward.slab_forward`)."""
        from . import triton_forward as tfw

        if self._triton is None:
            self._triton = tfw.prepare(self)
        return tfw.slab_forward(self._triton, xf)

    def fused_forward(self, xf: torch.Tensor) -> torch.Tensor:
        """y = S x + Σ_k u_k ⊙ (B (v_k ⊙ x)) + c·Σ_j x_j + bias for the rows x of ``xf`` by the
        fused kernel (float32 result; see :func:`.fused.fused_matmul`)."""
        p = self._packed_parts()
        X = xf.detach()
        if X.dtype != torch.float32 or not X.is_contiguous():
            X = X.to(torch.float32).contiguous()
        Y = fused.fused_matmul(p.values, p.rowptr, p.mask, p.signs, X.numpy(), p.V, p.aux, p.flags,
                               threads=torch.get_num_threads())
        return torch.from_numpy(Y)

    def blocked_forward(self, xf: torch.Tensor) -> torch.Tensor:
        """x Ŵᵀ + bias for many rows x of ``xf`` (prefill): Ŵ rebuilt from the packed parts by the
        numba decoder ``fused.BLOCK_ELEMS``/n output rows at a time, each block used in one matmul
        and dropped (no m×n temporary)."""
        p = self._packed_parts()
        m, n = self.out_features, self.in_features
        X = xf.detach().to(torch.float32).contiguous()
        Y = torch.empty(X.shape[0], m, dtype=torch.float32, device="cpu")  # the numba path: host only
        step = max(16, fused.BLOCK_ELEMS // n)
        threads = torch.get_num_threads()
        for i0 in range(0, m, step):
            i1 = min(m, i0 + step)
            W = fused.decode_rows(p.values, p.rowptr, p.mask, p.signs, p.V, p.aux, p.flags, i0, i1, n,
                                  threads=threads)
            torch.matmul(X, torch.from_numpy(W).T, out=Y[:, i0:i1])
        return self._add_bias(Y)

    def prepare_fused(self) -> bool:
        """Build the fused kernel's arrays now (else at the first forward). True when they hold a
        decoded copy of ``values`` (codes of fewer than 8 bits, unpacked into one byte each), so
        that the kernel no longer reads the packed buffer."""
        p = self._packed_parts()
        return p is not None and hasattr(self, "value_layout") and int(self.value_layout[0]) < 8

    def _packed_parts(self) -> _Packed | None:
        """The numba kernels' arrays (views of the buffers, plus the small float32 copies), built
        once; ``None`` when the layer is not :meth:`fused_supported` or set padding bits of the
        mask would confuse the kernels."""
        if self._packed is None:
            self._packed = _Packed(self) if self.fused_supported() else False
            if self._packed and not self._packed.ok:
                self._packed = False
        return self._packed or None

    def set_cache_weight(self, on: bool = True) -> None:
        """Materialise Ŵ once and use a dense matmul (faster on CPU for long inputs; costs m×n
        numbers of memory)."""
        self.cache_weight = on
        self._W = None

    def storage_bytes(self) -> int:
        """Bytes of the stored tensors (what the safetensors file holds, headers excluded)."""
        return sum(b.numel() * b.element_size() for b in self.state_dict().values())

    def extra_repr(self) -> str:
        coded = f"value_bits={int(self.value_layout[0])}, " if hasattr(self, "value_layout") else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"{coded}rank={self.rank}, signs={self.signs is not None}")


def _rice_codes(res, n: int) -> np.ndarray | None:
    """The Rice codes (uint8) of the kept positions of ``res.sparse`` (n columns) when ``res``
    asks for Rice-coded positions and keeps entries, else ``None``."""
    sp = res.sparse
    if res.budget.positions != "rice" or not sp.nnz:
        return None
    return rice_encode(np.asarray(torch.as_tensor(sp.indptr, device="cpu")),
                       np.asarray(torch.as_tensor(sp.indices, device="cpu")), n)[0]


def _result_layout(res, nm: tuple[int, int] | None, rice: np.ndarray | None, has_bias: bool) -> dict:
    """The layout arguments of :class:`SLaBLinear` (all but the dtypes) for the parts ``res`` has,
    with the N:M pattern ``nm`` and the Rice codes ``rice`` chosen by the caller."""
    codes = res.sparse_codes
    return dict(nnz=res.sparse.nnz, rank=res.rank, l_group=res.budget.l_group,
                rice_bytes=None if rice is None else rice.size,
                value_codes=None if codes is None else (codes.bits, int(codes.shape[1])),
                has_signs=res.signs_packed is not None,
                has_levels=res.levels is not None, has_offset=res.row_offset is not None,
                bias=has_bias, nm=nm, quant=None if res.quant is None else res.quant.layout)


class _Packed:
    """What the fused kernel reads: numpy views of ``values``, ``mask`` and ``signs`` (coded values
    as signed codes c − 2^(q−1), one byte each), the row offsets into ``values`` (m + 1 int64), V
    (r×n), [U | c | bias | σ] (m×(r+3), σ the row scale of coded values or 1) in float32, and the
    switches [sparse part, signs, offset, bias]."""

    def __init__(self, mod: SLaBLinear):
        m, n, r = mod.out_features, mod.in_features, mod.rank
        mask = self._mask_bytes(mod)
        has_mask = mask is not None
        self.mask = mask if has_mask else np.zeros(0, np.uint8)
        self._scan_mask(m, n, has_mask)
        coded = hasattr(mod, "value_layout")
        self.values = _signed_codes(mod) if coded else self._values(mod.values.detach())
        self.signs = (mod.signs.detach().reshape(-1).numpy() if mod.signs is not None
                      else np.zeros(0, np.uint8))
        self._factor_parts(mod, n, r, coded)
        self.flags = np.array([has_mask, mod.signs is not None and r > 0, mod.row_offset is not None,
                               mod.bias is not None], dtype=np.int8)

    @staticmethod
    def _mask_bytes(mod: SLaBLinear) -> np.ndarray | None:
        """The bitmask of S as flat uint8 bytes (a view of ``mask``, or N:M or Rice-coded positions
        decoded once into a bitmask); ``None`` when S keeps nothing."""
        decoded = hasattr(mod, "nm_codes") or hasattr(mod, "rice")
        if not ((hasattr(mod, "mask") or decoded) and mod.nnz > 0):
            return None
        if decoded:
            return pack_signs(mod.positions()).reshape(-1).numpy()
        return mod.mask.detach().reshape(-1).numpy()

    def _scan_mask(self, m: int, n: int, has_mask: bool) -> None:
        """``ok`` (no padding bit beyond column n is set in ``mask``) and ``rowptr`` (m + 1 int64:
        where each row's values start)."""
        mask = self.mask
        self.ok = not (has_mask and n % 8 and bool(
            (mask.reshape(m, -1)[:, -1] & ((1 << (8 - n % 8)) - 1)).any()))
        counts = np.unpackbits(mask.reshape(m, -1), axis=1).sum(1) if has_mask else np.zeros(m)
        self.rowptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def _factor_parts(self, mod: SLaBLinear, n: int, r: int, coded: bool) -> None:
        """``V`` (r×n float32) and ``aux`` = [U | c | bias | σ] (m×(r+3) float32; absent c and bias
        are 0, σ is 1 for float values)."""
        m = mod.out_features
        U, V = mod.factors(torch.float32) if r else (None, None)
        self.V = V.detach().T.contiguous().numpy() if r else np.zeros((0, n), np.float32)
        aux = torch.zeros(m, r + 3, dtype=torch.float32, device="cpu")  # read by the numba kernel
        if r:
            aux[:, :r] = U.detach()
        aux[:, r + 2] = mod.value_scales.detach().to(torch.float32) if coded else 1.0
        for col, t in ((r, mod.row_offset), (r + 1, mod.bias)):
            if t is not None:
                aux[:, col] = t.detach().to(torch.float32)
        self.aux = aux.numpy()

    @staticmethod
    def _values(values: torch.Tensor) -> np.ndarray:
        """float32 values as they are; 16-bit ones as their bit patterns (uint16: IEEE half,
        int16: bfloat16), without a copy."""
        if values.dtype in _CODE_VIEWS:
            return values.view(torch.int16).numpy().view(_CODE_VIEWS[values.dtype])
        return values.numpy()


CODE_ROWS = 256  # rows of q-bit codes unpacked at a time (the unpacking makes 8-byte temporaries)


def _signed_codes(mod: SLaBLinear) -> np.ndarray:
    """The coded values of S as int8 t = c − 2^(q−1), row-major: for q = 8 a view of the stored
    bytes (no copy), else unpacked ``CODE_ROWS`` rows at a time into one byte per value."""
    bits, k = (int(v) for v in mod.value_layout.tolist())
    packed = mod.values.detach()
    if bits == 8:
        return packed.numpy().view(np.int8).reshape(-1)
    out = np.empty((packed.shape[0], k), np.int8)
    for i0 in range(0, packed.shape[0], CODE_ROWS):
        out[i0 : i0 + CODE_ROWS] = mod.signed_codes(slice(i0, i0 + CODE_ROWS)).to(torch.int8).numpy()
    return out.reshape(-1)
