"""``SLaBLinear``: a linear layer stored as Ŵ = S + (U Vᵀ) ⊙ B in compact form.

Stored (all as buffers, so ``state_dict`` / safetensors hold exactly what is on disk):

- S as ``values`` (nnz, 16-bit floats by default, row-major order) and its pattern as a bitmask
  ``mask`` (m×⌈n/8⌉ uint8, 1 bit per entry), or for an N:M pattern as one combination code per
  group (``nm_codes``, ⌈log₂ C(M, N)⌉ bits per M entries, with ``nm`` = [N, M]; see
  :mod:`.nm_codes`) -- either cheaper on disk than 16-bit column indices whenever
  more than 1/16 of the entries are kept); CSR index arrays (int64) are built only when the
  factored forward first needs them (``_csr``, not saved),
- ``U`` (m×r) and ``V`` (n×r) in the same 16-bit dtype,
- ``signs`` (m×⌈n/8⌉ uint8): B packed 8 per byte, most significant bit first, bit 1 = +1,
- optional two-level codes ``levels`` (2×m: low, high), a per-row offset ``row_offset`` (m) and
  ``bias`` (m).

The dense Ŵ is built by :func:`slabopt.dense_weight`, the one definition of Ŵ from its parts,
and B by :func:`slabopt.unpack_signs`. The forward never forms the dense m×n weight when the rank is
small: it computes S x (sparse CSR product) + Σ_k u_k ⊙ (B (v_k ⊙ x)) + c·Σ_j x_j, with B unpacked to
±1 once per call. For larger ranks or two-level codes the dense Ŵ is rebuilt per call.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from slabopt import QuantizedMatrix, dense_weight, pack_signs, unpack_signs
from slabopt.quantized import QuantLayout

from . import nm_codes
from .bitpack import pack_uint, packed_width, unpack_uint

FACTORED_MAX_RANK = 4

class SLaBLinear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` holding Ŵ = S + (U Vᵀ) ⊙ B compactly."""

    def __init__(self, in_features: int, out_features: int, *, nnz: int = 0, rank: int = 0,
                 has_signs: bool = False, has_levels: bool = False, has_offset: bool = False,
                 bias: bool = False, nm: tuple[int, int] | None = None, quant: QuantLayout | None = None,
                 store_dtype: torch.dtype = torch.float16, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        m, n = out_features, in_features
        self.in_features, self.out_features = n, m
        self.compute_dtype = compute_dtype
        self.cache_weight = False  # keep the dense Ŵ after the first call (fast evaluation on CPU)
        self._W: torch.Tensor | None = None
        if nm is None and nnz:
            self.register_buffer("mask", torch.zeros(m, math.ceil(n / 8), dtype=torch.uint8))
        elif nnz:
            self.register_buffer("nm", torch.tensor(nm, dtype=torch.uint8))
            self.register_buffer("nm_codes", torch.zeros(nm_codes.packed_bytes(m, n, *nm), dtype=torch.uint8))
        self._csr: tuple[torch.Tensor, torch.Tensor] | None = None  # (crow, col), built on demand
        self.register_buffer("values", torch.zeros(nnz, dtype=store_dtype))
        self.register_buffer("U", torch.zeros(m, rank, dtype=store_dtype) if rank else None)
        self.register_buffer("V", torch.zeros(n, rank, dtype=store_dtype) if rank else None)
        self.register_buffer("signs", torch.zeros(m, math.ceil(n / 8), dtype=torch.uint8)
                             if has_signs else None)
        self.register_buffer("levels", torch.zeros(2, m, dtype=store_dtype) if has_levels else None)
        self.register_buffer("row_offset", torch.zeros(m, dtype=store_dtype) if has_offset else None)
        self.register_buffer("bias", torch.zeros(m, dtype=store_dtype) if bias else None)
        if quant is not None:
            self._quant_buffers(quant, store_dtype)

    def _quant_buffers(self, q: QuantLayout, store_dtype: torch.dtype) -> None:
        """Codes packed at ``bits`` bits, scales (and zero points) per row and group, the column
        group index packed at ⌈log₂ groups⌉ bits, and the layout itself (``q_layout``)."""
        m, n = q.shape
        self.register_buffer("q_layout", torch.tensor([q.bits, q.group_size or 0, q.symmetric,
                                                       q.group_index], dtype=torch.int32))
        self.register_buffer("q_codes", torch.zeros(m, packed_width(n, q.bits), dtype=torch.uint8))
        self.register_buffer("q_scales", torch.zeros(m, q.n_groups, dtype=store_dtype))
        if not q.symmetric:
            self.register_buffer("q_zeros", torch.zeros(m, q.n_groups, dtype=store_dtype))
        if q.group_index:
            width = (q.n_groups - 1).bit_length()
            self.register_buffer("q_index", torch.zeros(1, packed_width(n, width), dtype=torch.uint8))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_result(cls, res, bias: torch.Tensor | None = None, store_dtype: torch.dtype = torch.float16,
                    compute_dtype: torch.dtype = torch.float32) -> SLaBLinear:
        """Build from a :class:`slabopt.SolveResult` (torch arrays), casting values to ``store_dtype``."""
        m, n = res.shape
        sp = res.sparse
        pat = res.budget.pattern
        nm = (pat.n, pat.m) if pat.kind == "nm" and pat.m <= nm_codes.MAX_M else None
        mod = cls(n, m, nnz=sp.nnz, rank=res.rank, has_signs=res.signs_packed is not None,
                  has_levels=res.levels is not None, has_offset=res.row_offset is not None,
                  bias=bias is not None, store_dtype=store_dtype, compute_dtype=compute_dtype, nm=nm,
                  quant=None if res.quant is None else res.quant.layout)
        crow = torch.as_tensor(sp.indptr).to(torch.int64)
        col = torch.as_tensor(sp.indices).to(torch.int64)
        rows = torch.repeat_interleave(torch.arange(m), crow[1:] - crow[:-1])
        dense_mask = torch.zeros(m, n, dtype=torch.bool)
        dense_mask[rows, col] = True
        if sp.nnz and nm is None:
            mod.mask.copy_(pack_signs(dense_mask))
        elif sp.nnz:
            mod.nm_codes.copy_(nm_codes.encode(dense_mask, *nm))
        if res.quant is not None:
            mod._store_quant(res.quant, store_dtype)
        mod.rebuild_index()
        mod.values.copy_(torch.as_tensor(sp.values).to(store_dtype))
        if res.rank:
            mod.U.copy_(torch.as_tensor(res.U).to(store_dtype))
            mod.V.copy_(torch.as_tensor(res.V).to(store_dtype))
        if res.signs_packed is not None:
            mod.signs.copy_(torch.as_tensor(res.signs_packed).to(torch.uint8))
        if res.levels is not None:
            mod.levels.copy_(torch.as_tensor(res.levels).to(store_dtype))
        if res.row_offset is not None:
            mod.row_offset.copy_(torch.as_tensor(res.row_offset).to(store_dtype))
        if bias is not None:
            mod.bias.copy_(bias.detach().to(store_dtype))
        return mod

    def _store_quant(self, q: QuantizedMatrix, store_dtype: torch.dtype) -> None:
        self.q_codes.copy_(pack_uint(torch.as_tensor(q.codes).cpu(), q.bits))
        self.q_scales.copy_(torch.as_tensor(q.scales).to(store_dtype))
        if q.zeros is not None:
            self.q_zeros.copy_(torch.as_tensor(q.zeros).to(store_dtype))
        if q.group_index is not None:
            width = (q.layout.n_groups - 1).bit_length()
            self.q_index.copy_(pack_uint(torch.as_tensor(q.group_index).cpu().reshape(1, -1), width))

    def quant_matrix(self, dtype=None) -> QuantizedMatrix | None:
        """The stored quantised part as a :class:`slabopt.QuantizedMatrix` (scales in ``dtype``)."""
        if not hasattr(self, "q_codes"):
            return None
        dtype = dtype or self.compute_dtype
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
    def _layout_of(state: dict[str, torch.Tensor], shape: tuple[int, int]) -> QuantLayout | None:
        if "q_layout" not in state:
            return None
        bits, group, sym, has_index = (int(v) for v in state["q_layout"].tolist())
        return QuantLayout(shape, bits, group or None, bool(sym), bool(has_index))

    @classmethod
    def empty_like_state(cls, state: dict[str, torch.Tensor], shape: tuple[int, int],
                         compute_dtype: torch.dtype = torch.float32) -> SLaBLinear:
        """An instance whose buffers have the shapes/dtypes of a saved ``state`` (prefix stripped)."""
        m, n = shape
        U = state.get("U")
        mod = cls(n, m, nnz=state["values"].numel(), rank=0 if U is None else U.shape[1],
                  has_signs="signs" in state, has_levels="levels" in state,
                  has_offset="row_offset" in state, bias="bias" in state,
                  nm=tuple(state["nm"].tolist()) if "nm" in state else None,
                  quant=cls._layout_of(state, (m, n)),
                  store_dtype=state["values"].dtype, compute_dtype=compute_dtype)
        mod.load_state_dict(state, strict=True)
        mod.rebuild_index()
        return mod

    def positions(self) -> torch.Tensor:
        """The m×n boolean pattern of S, from the bitmask or the N:M codes."""
        m, n = self.out_features, self.in_features
        if hasattr(self, "nm_codes"):
            return nm_codes.decode(self.nm_codes, m, n, *self.nm.tolist())
        if hasattr(self, "mask"):
            return unpack_signs(self.mask, n, torch.int8) > 0
        return torch.zeros(m, n, dtype=torch.bool, device=self.values.device)

    def rebuild_index(self) -> None:
        """Check that the stored pattern holds as many positions as there are values; forget any
        CSR index built from an older pattern."""
        kept = int(self.positions().sum())
        if kept != self.values.numel():
            raise ValueError(f"mask holds {kept} entries but {self.values.numel()} values are stored")
        self._csr = None

    def csr_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(crow, col) of S in CSR form (row-major, ascending columns), built once on demand."""
        if self._csr is None or self._csr[0].device != self.values.device:  # none yet, or moved
            mask = self.positions()
            counts = mask.sum(1)
            crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(torch.int64)
            self._csr = (crow, torch.nonzero(mask, as_tuple=True)[1].to(torch.int64))
        return self._csr

    def sparse_dense(self, dtype=None) -> torch.Tensor:
        """S as a dense m×n matrix (kept values in row-major order at the stored positions)."""
        S = torch.zeros(self.out_features, self.in_features, dtype=dtype or self.compute_dtype,
                        device=self.values.device)
        if self.nnz:
            S[self.positions()] = self.values.to(S.dtype)
        return S

    # ------------------------------------------------------------------ parts
    @property
    def rank(self) -> int:
        return 0 if self.U is None else int(self.U.shape[1])

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def sparse_csr(self, dtype=None) -> torch.Tensor:
        dtype = dtype or self.compute_dtype
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            crow, col = self.csr_index()
            return torch.sparse_csr_tensor(crow, col, self.values.to(dtype),
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

        return dense_weight(self.sparse_dense(dtype), U=cast(self.U), V=cast(self.V),
                            B=self.sign_matrix(dtype), levels=cast(self.levels),
                            row_offset=cast(self.row_offset), quant=self.quant_matrix(dtype))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.compute_dtype
        shape = x.shape
        xf = x.reshape(-1, self.in_features).to(dt)
        if self.cache_weight:
            if self._W is None or self._W.dtype != dt:
                self._W = self.reconstruct(dt)
            y = xf @ self._W.T
        elif self.rank > FACTORED_MAX_RANK or self.levels is not None or hasattr(self, "q_codes"):
            y = xf @ self.reconstruct(dt).T
        else:
            y = (self.sparse_csr(dt) @ xf.T).T if self.nnz else xf.new_zeros(xf.shape[0],
                                                                             self.out_features)
            if self.rank:
                U, V = self.U.to(dt), self.V.to(dt)
                B = self.sign_matrix(dt)
                for k in range(self.rank):
                    z = xf * V[:, k]
                    z = z if B is None else z @ B.T
                    y = y + z * U[:, k] if B is not None else y + z.sum(-1, keepdim=True) * U[:, k]
            if self.row_offset is not None:  # Ŵ += c·1ᵀ  ⇒  y += c·Σ_j x_j
                y = y + xf.sum(-1, keepdim=True) * self.row_offset.to(dt)
        if self.bias is not None:
            y = y + self.bias.to(dt)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def set_cache_weight(self, on: bool = True) -> None:
        """Materialise Ŵ once and use a dense matmul (faster on CPU at moderate sparsity)."""
        self.cache_weight = on
        self._W = None

    def storage_bytes(self) -> int:
        """Bytes of the stored tensors (what the safetensors file holds, headers excluded)."""
        return sum(b.numel() * b.element_size() for b in self.state_dict().values())

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
                f"rank={self.rank}, signs={self.signs is not None}")
