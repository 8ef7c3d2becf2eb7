"""The binarized part of a :class:`.SLaBLinear` (methods ``billm`` and ``arb``) as buffers.

A :class:`slabopt.binarized.BinarizedMatrix` (m×n, S salient columns, T terms per block, see
:mod:`slabopt.binarized`) is kept by the child module ``binarized`` of the layer, one buffer per
part that :func:`slabopt.binarized.bit_breakdown` counts, so that what ``state_dict`` (and the
safetensors file) holds is what ``storage_bits`` counts, up to the padding of each bit plane to a
whole byte:

- ``signs``: the first sign plane s_0, m·n bits, row-major;
- ``second_plane``: s_1 on the salient columns (ascending), m·S bits, row-major;
- ``group_bitmap``: the group bits of the other weights, m·(n − S) bits, row-major, followed (with
  ARB-LLM's CGB) by those of the salient weights, m·S bits;
- ``salient_columns``: the salient-column bitmap, n bits;
- ``row_scales`` α and (BiLLM) ``row_means`` μ: n_blocks×T×m values in the layer's value dtype;
- (ARB-RC) ``column_scales_salient`` β, (2·salient groups)×S, and ``column_scales_other``, 2×(n − S);
- ``layout`` (int32, not counted, as ``q_layout`` of integer codes): [blocksize, most salient
  columns per block, means, column scales, salient split, S], which fixes every shape above.

Bit planes are packed 8 bits per byte, most significant bit first, bit 1 = True (+1 for signs, the
larger group for the bitmaps, salient for the columns): the layout of :func:`slabopt.pack_signs`
for one row of all the plane's bits, padded with 0 bits to a whole byte. Ŵ is rebuilt from the
unpacked parts by :meth:`slabopt.binarized.BinarizedMatrix.dequantize`:

    Ŵ_ij = Σ_k ( μ_{b,t,k}[i] + α_{b,t,k}[i] · β_{t,k}[j] · s_{k,ij} ).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slabopt import pack_signs, unpack_signs
from slabopt.binarized import BinarizedLayout, BinarizedMatrix

NAME = "binarized"  # the child module of SLaBLinear; its buffers are saved as "binarized.<part>"
LAYOUT_KEY = f"{NAME}.layout"
PLANES = ("signs", "second_plane", "group_bitmap", "salient_columns")


def plane_bits(layout: BinarizedLayout) -> dict[str, int]:
    """Bits of each packed plane: m·n, m·S, m·(n − S) (+ m·S with CGB) and n."""
    m, n = layout.shape
    S = layout.salient_columns
    return {"signs": m * n, "second_plane": m * S,
            "group_bitmap": m * (n - S) + (m * S if layout.salient_split else 0), "salient_columns": n}


def value_shapes(layout: BinarizedLayout) -> dict[str, tuple[int, ...] | None]:
    """The shape of each value buffer (``None``: not stored by this layout)."""
    m, n = layout.shape
    S = layout.salient_columns
    rows = (layout.n_blocks, layout.n_terms, m)
    cols = layout.column_scales
    return {"row_scales": rows, "row_means": rows if layout.means else None,
            "column_scales_salient": (2 * layout.salient_groups, S) if cols else None,
            "column_scales_other": (2, n - S) if cols else None}


def layout_from_state(state: dict[str, torch.Tensor], shape: tuple[int, int]) -> BinarizedLayout | None:
    """The :class:`BinarizedLayout` of a saved layer's ``state`` (``None`` when it has no binarized
    part)."""
    if LAYOUT_KEY not in state:
        return None
    bs, most, means, cols, split, S = (int(v) for v in state[LAYOUT_KEY].tolist())
    return BinarizedLayout((int(shape[0]), int(shape[1])), bs, most, bool(means), bool(cols), bool(split),
                           salient_columns=S)


def _host(a) -> np.ndarray:
    """A NumPy copy (or view) on the host of a NumPy array or torch tensor."""
    return np.asarray(torch.as_tensor(a, device="cpu").detach())


def _pack(*arrays) -> torch.Tensor:
    """The bits of the boolean ``arrays``, row-major one after the other, packed 8 per byte."""
    bits = np.concatenate([_host(a).astype(bool).reshape(-1) for a in arrays])
    return torch.from_numpy(pack_signs(bits.reshape(1, -1)).reshape(-1))


def _unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` bits of a packed plane as booleans (on the plane's device)."""
    if count == 0:
        return torch.zeros(0, dtype=torch.bool, device=packed.device)
    return unpack_signs(packed.reshape(1, -1), count, torch.int8).reshape(-1) > 0


class BinarizedParts(nn.Module):
    """The buffers of a binarized part (module docstring) of the given layout (S known)."""

    def __init__(self, layout: BinarizedLayout, store_dtype: torch.dtype = torch.float16,
                 device: torch.device | str = "cpu"):
        """Zero buffers of ``layout`` on ``device`` (the CPU, or ``"meta"`` for shapes only)."""
        super().__init__()
        if layout.salient_columns is None:
            raise ValueError("a stored binarized part needs its number of salient columns")
        self.shape = tuple(layout.shape)
        self.register_buffer("layout", torch.tensor(
            [layout.blocksize, layout.max_salient, layout.means, layout.column_scales,
             layout.salient_split, layout.salient_columns], dtype=torch.int32, device=device))
        for name, bits in plane_bits(layout).items():
            self.register_buffer(name, torch.zeros(-(-bits // 8), dtype=torch.uint8, device=device))
        for name, shape in value_shapes(layout).items():
            zeros = None if shape is None else torch.zeros(shape, dtype=store_dtype, device=device)
            self.register_buffer(name, zeros)

    def stored_layout(self) -> BinarizedLayout:
        """The layout the buffers hold (S included)."""
        return layout_from_state({LAYOUT_KEY: self.layout}, self.shape)

    def store(self, q: BinarizedMatrix) -> None:
        """Pack the bit planes of ``q`` and cast its values to the buffers' dtype."""
        if q.layout != self.stored_layout() or q.layout.salient_columns != int(self.layout[5]):  # S too
            raise ValueError(f"binarized part {q.layout} does not fit the buffers of {self.stored_layout()}")
        planes = {"signs": (q.signs,), "second_plane": (q.signs2,),
                  "group_bitmap": (q.groups,) if q.salient_groups is None else (q.groups, q.salient_groups),
                  "salient_columns": (q.salient,)}
        for name, arrays in planes.items():
            getattr(self, name).copy_(_pack(*arrays))
        for name, shape in value_shapes(q.layout).items():
            if shape is not None:
                buf = getattr(self, name)
                buf.copy_(torch.as_tensor(getattr(q, name), device=buf.device).detach().to(dtype=buf.dtype))

    def matrix(self, dtype: torch.dtype = torch.float32) -> BinarizedMatrix:
        """The stored part as a :class:`BinarizedMatrix`: planes unpacked, values in ``dtype``."""
        lay = self.stored_layout()
        m, n = lay.shape
        S = lay.salient_columns
        salient = _unpack(self.salient_columns, n)
        groups = _unpack(self.group_bitmap, plane_bits(lay)["group_bitmap"])
        arrays = {"salient": salient, "signs": _unpack(self.signs, m * n).reshape(m, n),
                  "signs2": _unpack(self.second_plane, m * S).reshape(m, S),
                  "groups": groups[: m * (n - S)].reshape(m, n - S),
                  "salient_groups": groups[m * (n - S):].reshape(m, S) if lay.salient_split else None}
        for name, shape in value_shapes(lay).items():
            arrays[name] = None if shape is None else getattr(self, name).to(dtype)
        return BinarizedMatrix(layout=lay, **arrays)

    def extra_repr(self) -> str:
        if self.layout.is_meta:  # not loaded yet
            return f"shape={self.shape}"
        bs, _, means, cols, split, S = (int(v) for v in self.layout.tolist())
        return (f"shape={self.shape}, blocksize={bs}, salient_columns={S}, means={bool(means)}, "
                f"column_scales={bool(cols)}, salient_split={bool(split)}")
