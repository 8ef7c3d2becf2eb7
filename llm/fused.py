"""Fused CPU forward of a compressed layer, straight from its packed parts (numba).

For inputs x (rows of X) the layer computes

    y = S x + Σ_k u_k ⊙ (B (v_k ⊙ x)) + c·(Σ_j x_j) + bias,

with S given by its bitmask (m×⌈n/8⌉ bytes, most significant bit first) and its values in row-major
order (16- or 32-bit floats, or signed 8-bit codes whose row sums are multiplied by the row's scale
σ_i: S_ij = σ_i·code_ij), B by its packed signs (same layout, bit 1 = +1), U, V (m×r, n×r), the
per-row offset c and the bias. Nothing of size m×n is formed and no column index is stored: a
row's kept values start at ``rowptr[i]`` (m + 1 integers) and their columns are read from the mask bits.

Per row, 64 columns at a time (8 mask bytes):

- sparse part: the 64 mask bits, put in column order, select which lanes receive the next kept
  values (``llvm.masked.expandload``: ``vpexpandw`` / ``vexpandps`` on AVX-512, a scalar loop
  elsewhere); the expanded values are widened to float32 and multiplied into x;
- sign part: with z = v_k ⊙ x, B z = 2·Σ_{j: B_ij = +1} z_j − Σ_j z_j, the first sum a masked add of
  z under the sign bits.

The last n mod 64 columns of a row are walked bit by bit. Values stored as float16 or bfloat16 are
widened in registers (a 2^16-entry float32 table in the scalar tail); everything accumulates in
float32. Rows are split over threads with ``prange``.
"""

from __future__ import annotations

from functools import cache
from types import FunctionType

import numpy as np

try:  # pragma: no cover - depends on the environment
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False


def _renamed(func, suffix: str):
    """A copy of ``func`` named ``func.__name__ + suffix``. numba keys its on-disk cache by the
    module, qualified name and line of the Python function, not by ``parallel=True``: compiled from
    one function, the serial and the parallel kernel would share one cache entry, and whichever
    was compiled first would be loaded for both (two threads running as one)."""
    copy = FunctionType(func.__code__, func.__globals__, func.__name__ + suffix, func.__defaults__,
                        func.__closure__)
    copy.__qualname__ = func.__qualname__ + suffix
    return copy


# input rows up to which the fused kernel beats a blocked rebuild of Ŵ and a matmul (one thread,
# ratio 0.5, rank 1; ``python -m benchmarks.decode_speed rows``): 2 for SmolLM2's layers, 4 for
# 4096×4096 and larger
MAX_ROWS = 4
MAX_ROWS_SMALL = 2
SMALL_LAYER = 1 << 22  # m·n below which MAX_ROWS_SMALL applies
MAX_RANK = 16
BLOCK_ELEMS = 1 << 20  # Ŵ entries rebuilt at a time for many input rows (4 MiB of float32)
PARALLEL_MIN_WORK = 1 << 18  # m·n·rows below which one thread is used (thread wake-up costs more)


# ---------------------------------------------------------------------------------- LLVM pieces
if HAVE_NUMBA:
    _F32 = ir.FloatType()
    _I16, _I32, _I64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
    _VF = ir.VectorType(_F32, 16)

    def _declare(builder, name: str, ret, args):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)

    def _chunk_bits(builder, base, offset):
        """The 8 bytes at ``base + offset`` as 64 bits in column order (bit t = column t): bytes hold
        their first column in the most significant bit, so swap bytes and reverse all bits."""
        word = builder.load(builder.bitcast(builder.gep(base, [offset]), _I64.as_pointer()), align=1)
        word = builder.call(_declare(builder, "llvm.bswap.i64", _I64, [_I64]), [word])
        return builder.call(_declare(builder, "llvm.bitreverse.i64", _I64, [_I64]), [word])

    def _bits(builder, word, shift: int, width: int):
        """(``width``-bit integer, <width x i1> lanes) of ``word >> shift``."""
        k = builder.trunc(builder.lshr(word, ir.Constant(_I64, shift)), ir.IntType(width))
        return k, builder.bitcast(k, ir.VectorType(ir.IntType(1), width))

    def _horizontal_sum(builder, accs):
        """Σ of the lanes of Σ accs (a shuffle tree)."""
        v = accs[0]
        for a in accs[1:]:
            v = builder.fadd(v, a)
        n = 16
        while n > 1:
            n //= 2
            idx = ir.Constant(ir.VectorType(_I32, 16), [i + n if i < n else i for i in range(16)])
            v = builder.fadd(v, builder.shuffle_vector(v, v, idx))
        return builder.extract_element(v, ir.Constant(_I32, 0))

    def _widen16(builder, raw, kind: str):
        """<16 x i16> → <16 x float>: IEEE half bits (``kind`` "f16") or bfloat16 bits ("bf16")."""
        if kind == "f16":
            return builder.fpext(builder.bitcast(raw, ir.VectorType(ir.HalfType(), 16)), _VF)
        wide = builder.zext(raw, ir.VectorType(_I32, 16))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.VectorType(_I32, 16), [16] * 16)), _VF)

    def _xload(builder, xptr, col):
        return builder.load(builder.bitcast(builder.gep(xptr, [col]), _VF.as_pointer()), align=4)

    def _data(context, builder, ty, value, offset=None):
        """Pointer to element ``offset`` (flat, C order) of an array argument."""
        ptr = context.make_array(ty)(context, builder, value).data
        return ptr if offset is None else builder.gep(ptr, [offset])

    def _sparse_step16(builder, vptr, p, bits, c, consume, kind):
        """One 64-column chunk of 16-bit values: two 32-lane expansions, each half widened to
        float32 and handed to ``consume(first column, vector, slot)``."""
        vraw = ir.VectorType(_I16, 32)
        expand = _declare(builder, "llvm.masked.expandload.v32i16", vraw,
                          [_I16.as_pointer(), ir.VectorType(ir.IntType(1), 32), vraw])
        ctpop = _declare(builder, "llvm.ctpop.i32", _I32, [_I32])
        halves = [ir.Constant(ir.VectorType(_I32, 16), list(range(16 * h, 16 * h + 16))) for h in (0, 1)]
        for h in range(2):
            k, lanes = _bits(builder, bits, 32 * h, 32)
            pv = builder.load(p)
            raw = builder.call(expand, [builder.gep(vptr, [pv]), lanes, ir.Constant(vraw, None)])
            for q in range(2):
                w = _widen16(builder, builder.shuffle_vector(raw, raw, halves[q]), kind)
                col = builder.add(builder.mul(c, ir.Constant(_I64, 64)), ir.Constant(_I64, 32 * h + 16 * q))
                consume(col, w, 2 * h + q)
            builder.store(builder.add(pv, builder.zext(builder.call(ctpop, [k]), _I64)), p)

    def _expand_lanes16(builder, vptr, p, bits, c, consume, elem, name, widen):
        """One 64-column chunk of ``elem`` values: four 16-lane expansions
        (``llvm.masked.expandload.<name>``), each widened to float32 by ``widen`` (see above)."""
        vb = ir.VectorType(ir.IntType(1), 16)
        vec = ir.VectorType(elem, 16)
        expand = _declare(builder, f"llvm.masked.expandload.{name}", vec, [elem.as_pointer(), vb, vec])
        ctpop = _declare(builder, "llvm.ctpop.i16", _I16, [_I16])
        for q in range(4):
            k, lanes = _bits(builder, bits, 16 * q, 16)
            pv = builder.load(p)
            raw = builder.call(expand, [builder.gep(vptr, [pv]), lanes, ir.Constant(vec, None)])
            col = builder.add(builder.mul(c, ir.Constant(_I64, 64)), ir.Constant(_I64, 16 * q))
            consume(col, widen(raw), q)
            builder.store(builder.add(pv, builder.zext(builder.call(ctpop, [k]), _I64)), p)

    def _sparse_step32(builder, vptr, p, bits, c, consume):
        """One 64-column chunk of float32 values."""
        _expand_lanes16(builder, vptr, p, bits, c, consume, _F32, "v16f32", lambda raw: raw)

    def _sparse_step8(builder, vptr, p, bits, c, consume):
        """One 64-column chunk of signed 8-bit codes, converted to float32."""
        _expand_lanes16(builder, vptr, p, bits, c, consume, ir.IntType(8), "v16i8",
                       lambda raw: builder.sitofp(raw, _VF))

    _KIND = {"uint16": "f16", "int16": "bf16", "float32": "f32", "int8": "i8"}

    def _walk_sparse(builder, kind, vptr, p0_v, mptr, moff_v, nfull_v, consume):
        """Loop over a row's full 64-column chunks, handing each expanded value vector to ``consume``."""
        p = cgutils.alloca_once_value(builder, p0_v)
        with cgutils.for_range(builder, nfull_v) as loop:
            c = loop.index
            bits = _chunk_bits(builder, mptr, builder.add(moff_v, builder.mul(c, ir.Constant(_I64, 8))))
            if kind == "f32":
                _sparse_step32(builder, vptr, p, bits, c, consume)
            elif kind == "i8":
                _sparse_step8(builder, vptr, p, bits, c, consume)
            else:
                _sparse_step16(builder, vptr, p, bits, c, consume, kind)

    @intrinsic
    def _sparse_chunks(typingctx, vals, p0, mask, moff, x, xoff, nfull):
        """Σ_{j < 64·nfull, mask bit j set} value · x_j of one row: values from ``vals[p0]`` on,
        mask bytes from ``mask[moff]`` on, x from flat element ``xoff`` of ``x`` on. ``vals``
        holds float32, IEEE half bits (uint16), bfloat16 bits (int16) or signed codes (int8)."""
        sig = types.float32(vals, types.int64, mask, types.int64, x, types.int64, types.int64)
        kind = _KIND[str(vals.dtype)]

        def codegen(context, builder, sig, args):
            vals_a, p0_v, mask_a, moff_v, x_a, xoff_v, nfull_v = args
            xptr = _data(context, builder, sig.args[4], x_a, xoff_v)
            fma = _declare(builder, "llvm.fma.v16f32", _VF, [_VF, _VF, _VF])
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_VF, [0.0] * 16)) for _ in range(4)]

            def consume(col, w, slot):
                acc = accs[slot]
                builder.store(builder.call(fma, [w, _xload(builder, xptr, col), builder.load(acc)]), acc)

            _walk_sparse(builder, kind, _data(context, builder, sig.args[0], vals_a), p0_v,
                         _data(context, builder, sig.args[2], mask_a), moff_v, nfull_v, consume)
            return _horizontal_sum(builder, [builder.load(a) for a in accs])

        return sig, codegen

    def _splat(builder, value):
        """<16 x float> with every lane ``value``."""
        v = builder.insert_element(ir.Constant(_VF, None), value, ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 16), [0] * 16))

    @intrinsic
    def _sparse_scatter(typingctx, vals, p0, mask, moff, scale, w, woff, nfull):
        """w_j += scale·value for every kept j < 64·nfull of one row (arguments as
        :func:`_sparse_chunks`)."""
        sig = types.void(vals, types.int64, mask, types.int64, types.float32, w, types.int64, types.int64)
        kind = _KIND[str(vals.dtype)]

        def codegen(context, builder, sig, args):
            vals_a, p0_v, mask_a, moff_v, scale_v, w_a, woff_v, nfull_v = args
            wptr = _data(context, builder, sig.args[5], w_a, woff_v)
            splat = _splat(builder, scale_v)

            def consume(col, vec, slot):
                at = builder.bitcast(builder.gep(wptr, [col]), _VF.as_pointer())
                builder.store(builder.fadd(builder.load(at, align=4), builder.fmul(vec, splat)), at, align=4)

            _walk_sparse(builder, kind, _data(context, builder, sig.args[0], vals_a), p0_v,
                         _data(context, builder, sig.args[2], mask_a), moff_v, nfull_v, consume)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _sign_scatter(typingctx, signs, soff, v, voff, alpha, w, woff, nfull):
        """w_j += alpha·B_ij·v_j for j < 64·nfull of one row (sign bytes from ``signs[soff]`` on,
        v and w from flat elements ``voff`` and ``woff`` on)."""
        sig = types.void(signs, types.int64, v, types.int64, types.float32, w, types.int64, types.int64)

        def codegen(context, builder, sig, args):
            s_a, soff_v, v_a, voff_v, alpha_v, w_a, woff_v, nfull_v = args
            sptr = _data(context, builder, sig.args[0], s_a)
            vptr = _data(context, builder, sig.args[2], v_a, voff_v)
            wptr = _data(context, builder, sig.args[5], w_a, woff_v)
            alpha = cgutils.alloca_once_value(builder, alpha_v)
            splat = builder.insert_element(ir.Constant(_VF, None), builder.load(alpha), ir.Constant(_I32, 0))
            splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(_I32, 16), [0] * 16))
            with cgutils.for_range(builder, nfull_v) as loop:
                c = loop.index
                bits = _chunk_bits(builder, sptr, builder.add(soff_v, builder.mul(c, ir.Constant(_I64, 8))))
                for q in range(4):
                    _k, lanes = _bits(builder, bits, 16 * q, 16)
                    col = builder.add(builder.mul(c, ir.Constant(_I64, 64)), ir.Constant(_I64, 16 * q))
                    lv = builder.fmul(_xload(builder, vptr, col), splat)
                    at = builder.bitcast(builder.gep(wptr, [col]), _VF.as_pointer())
                    add = builder.select(lanes, lv, builder.fneg(lv))
                    builder.store(builder.fadd(builder.load(at, align=4), add), at, align=4)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def _sign_chunks(typingctx, signs, soff, z, zoff, nfull):
        """Σ_{j < 64·nfull, sign bit j set} z_j of one row (sign bytes from ``signs[soff]`` on, z
        from flat element ``zoff`` on)."""
        sig = types.float32(signs, types.int64, z, types.int64, types.int64)

        def codegen(context, builder, sig, args):
            s_a, soff_v, z_a, zoff_v, nfull_v = args
            sptr = _data(context, builder, sig.args[0], s_a)
            zptr = _data(context, builder, sig.args[2], z_a, zoff_v)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(_VF, [0.0] * 16)) for _ in range(4)]
            zero = ir.Constant(_VF, [0.0] * 16)
            with cgutils.for_range(builder, nfull_v) as loop:
                c = loop.index
                bits = _chunk_bits(builder, sptr, builder.add(soff_v, builder.mul(c, ir.Constant(_I64, 8))))
                for q in range(4):
                    _k, lanes = _bits(builder, bits, 16 * q, 16)
                    col = builder.add(builder.mul(c, ir.Constant(_I64, 64)), ir.Constant(_I64, 16 * q))
                    zv = builder.select(lanes, _xload(builder, zptr, col), zero)
                    builder.store(builder.fadd(builder.load(accs[q]), zv), accs[q])
            return _horizontal_sum(builder, [builder.load(a) for a in accs])

        return sig, codegen

    def _value(vals, table, p):  # pragma: no cover - replaced by the overload in compiled code
        raise NotImplementedError

    @overload(_value)
    def _value_impl(vals, table, p):
        """vals[p] as float32: directly (float32, int8 codes), or through ``table`` (2^16 entries)
        for 16-bit floats."""
        if vals.dtype == types.float32:
            return lambda vals, table, p: vals[p]
        if vals.dtype == types.int8:
            return lambda vals, table, p: np.float32(vals[p])
        return lambda vals, table, p: table[np.uint16(vals[p])]

    def _sparse_tail(vals, table, p_end, mask, moff, x, g0, nb, n):
        """Σ over the columns from 8·g0 to n of one row, walking its mask bytes g0 … nb − 1; the
        row's values end at ``p_end``."""
        p = _tail_start(mask, moff, g0, nb, p_end)
        acc = np.float32(0.0)
        for g in range(g0, nb):
            b = mask[moff + g]
            for t in range(min(8, n - 8 * g)):
                if (b >> (7 - t)) & 1:
                    acc += _value(vals, table, p) * x[8 * g + t]
                    p += 1
        return acc

    def _sign_tail(signs, soff, z, g0, nb, n):
        acc = np.float32(0.0)
        for g in range(g0, nb):
            b = signs[soff + g]
            for t in range(min(8, n - 8 * g)):
                if (b >> (7 - t)) & 1:
                    acc += z[8 * g + t]
        return acc

    def _kernel(vals, table, rowptr, mask, signs, X, V, aux, flags, out):
        """out[b, i] = y_bi for every row b of X and every output i (see the module docstring).

        V is r×n (float32), ``aux`` m×(r+3) float32 holding [U | c | bias | σ] (σ the row scale of
        coded values, 1 otherwise), ``flags`` the four switches (sparse part, signs, row offset,
        bias). The row body is written out here, not called: a call passing arrays costs
        reference counting per row."""
        rows, n = X.shape
        r = V.shape[0]
        nb = (n + 7) // 8
        nfull = n // 64
        tail = 64 * nfull < n  # (tested outside the tail code: its presence slows the chunks)
        Z = np.empty((rows, r, n), np.float32)
        zsum = np.empty((rows, r + 1), np.float32)  # Σ_j z_kj, then Σ_j x_j
        for b in range(rows):
            for k in range(r):
                s = np.float32(0.0)
                for j in range(n):
                    Z[b, k, j] = V[k, j] * X[b, j]
                    s += Z[b, k, j]
                zsum[b, k] = s
            zsum[b, r] = X[b].sum()
        for i in prange(out.shape[1]):
            for b in range(rows):
                acc = np.float32(0.0)
                if flags[0]:
                    sx = _sparse_chunks(vals, rowptr[i], mask, i * nb, X, b * n, nfull)
                    if tail:
                        sx += _sparse_tail(vals, table, rowptr[i + 1], mask, i * nb, X[b], 8 * nfull, nb, n)
                    acc += aux[i, r + 2] * sx
                for k in range(r):
                    bz = zsum[b, k]
                    if flags[1]:
                        plus = _sign_chunks(signs, i * nb, Z, (b * r + k) * n, nfull)
                        if tail:
                            plus += _sign_tail(signs, i * nb, Z[b, k], 8 * nfull, nb, n)
                        bz = np.float32(2.0) * plus - bz
                    acc += aux[i, k] * bz
                if flags[2]:
                    acc += aux[i, r] * zsum[b, r]
                if flags[3]:
                    acc += aux[i, r + 1]
                out[b, i] = acc

    def _tail_start(mask, moff, g0, nb, p_end):
        """Offset of the first value of mask bytes g0 … nb − 1 of a row whose values end at p_end."""
        p = p_end
        for g in range(g0, nb):
            b = mask[moff + g]
            while b:
                p -= b & 1
                b >>= 1
        return p

    def _scatter_tail(vals, table, p_end, mask, moff, scale, w, nfull):
        """w_j += scale·value for the kept columns j ≥ 64·nfull of a row (values ending at p_end)."""
        n = w.shape[0]
        p = _tail_start(mask, moff, 8 * nfull, (n + 7) // 8, p_end)
        for j in range(64 * nfull, n):
            if (mask[moff + (j >> 3)] >> (7 - (j & 7))) & 1:
                w[j] += scale * _value(vals, table, p)
                p += 1

    def _decode(vals, table, rowptr, mask, signs, V, aux, flags, i0, W):
        """W[t] = row i0 + t of Ŵ = S + (U Vᵀ) ⊙ B + c·1ᵀ (float32, no bias) for every row t of W."""
        n = W.shape[1]
        nb = (n + 7) // 8
        nfull = n // 64
        r = V.shape[0]
        for t in prange(W.shape[0]):
            i = i0 + t
            W[t, :] = aux[i, r] if flags[2] else np.float32(0.0)
            for k in range(r):
                a = aux[i, k]
                if flags[1]:
                    _sign_scatter(signs, i * nb, V, k * n, a, W, t * n, nfull)
                    for j in range(64 * nfull, n):
                        bit = (signs[i * nb + (j >> 3)] >> (7 - (j & 7))) & 1
                        W[t, j] += a * V[k, j] if bit else -a * V[k, j]
                else:
                    for j in range(n):
                        W[t, j] += a * V[k, j]
            if flags[0]:
                _sparse_scatter(vals, rowptr[i], mask, i * nb, aux[i, r + 2], W, t * n, nfull)
                if 64 * nfull < n:
                    _scatter_tail(vals, table, rowptr[i + 1], mask, i * nb, aux[i, r + 2], W[t], nfull)

    _tail_start = njit(inline="always", cache=True)(_tail_start)
    _scatter_tail = njit(inline="always", cache=True)(_scatter_tail)
    _decode_serial = njit(cache=True)(_decode)
    _decode_parallel = njit(parallel=True, cache=True)(_renamed(_decode, "_parallel"))
    _sparse_tail = njit(inline="always", cache=True)(_sparse_tail)
    _sign_tail = njit(inline="always", cache=True)(_sign_tail)
    _kernel_serial = njit(cache=True)(_kernel)
    _kernel_parallel = njit(parallel=True, cache=True)(_renamed(_kernel, "_parallel"))


# ----------------------------------------------------------------------------------- Python side
@cache
def value_table(kind: str) -> np.ndarray:
    """float32 value of every 16-bit code: IEEE half (``kind`` "f16") or bfloat16 ("bf16")."""
    codes = np.arange(1 << 16, dtype=np.uint32)
    if kind == "f16":
        return codes.astype(np.uint16).view(np.float16).astype(np.float32)
    return (codes << 16).view(np.float32)


_EMPTY_F32 = np.zeros(0, np.float32)
_TABLE_KINDS = {np.dtype(np.uint16): "f16", np.dtype(np.int16): "bf16"}  # 16-bit value bit patterns


def _table_for(vals: np.ndarray) -> np.ndarray:
    kind = _TABLE_KINDS.get(vals.dtype)
    return _EMPTY_F32 if kind is None else value_table(kind)


def max_rows(m: int, n: int) -> int:
    """Most input rows for which :func:`fused_matmul` is used rather than :func:`decode_rows` and a
    matmul, for an m×n layer."""
    return MAX_ROWS if m * n >= SMALL_LAYER else MAX_ROWS_SMALL


def _set_threads(threads: int) -> int:
    threads = max(1, min(threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return threads


def fused_matmul(vals: np.ndarray, rowptr: np.ndarray, mask: np.ndarray, signs: np.ndarray,
                 X: np.ndarray, V: np.ndarray, aux: np.ndarray, flags: np.ndarray,
                 threads: int = 1) -> np.ndarray:
    """Y (rows × m, float32) with Y[b] = S x_b + Σ_k u_k ⊙ (B (v_k ⊙ x_b)) + c·Σ_j x_bj + bias.

    ``vals``: kept values in row-major order, float32, IEEE half bits (uint16), bfloat16 bits
    (int16) or signed codes (int8, multiplied by the row scale σ); ``rowptr``: m + 1 offsets into
    ``vals``; ``mask``, ``signs``: the packed bits,
    flattened (m·⌈n/8⌉ bytes); ``X``: rows × n float32 (C order); ``V``: r×n float32; ``aux``:
    m×(r+3) float32 [U | c | bias | σ]; ``flags``: int8 [sparse, signs, offset, bias].
    """
    table = _table_for(vals)
    out = np.empty((X.shape[0], aux.shape[0]), np.float32)
    work = aux.shape[0] * X.shape[1] * X.shape[0]
    if threads > 1 and work >= PARALLEL_MIN_WORK:
        _set_threads(threads)
        _kernel_parallel(vals, table, rowptr, mask, signs, X, V, aux, flags, out)
    else:
        _kernel_serial(vals, table, rowptr, mask, signs, X, V, aux, flags, out)
    return out


def decode_rows(vals: np.ndarray, rowptr: np.ndarray, mask: np.ndarray, signs: np.ndarray,
                V: np.ndarray, aux: np.ndarray, flags: np.ndarray, start: int, stop: int,
                n: int, threads: int = 1) -> np.ndarray:
    """Rows ``start`` … ``stop`` − 1 of Ŵ = S + (U Vᵀ) ⊙ B + c·1ᵀ as a float32 array (arguments as
    :func:`fused_matmul`); the bias is not included."""
    W = np.empty((stop - start, n), np.float32)
    table = _table_for(vals)
    if threads > 1 and W.size >= PARALLEL_MIN_WORK:
        _set_threads(threads)
        _decode_parallel(vals, table, rowptr, mask, signs, V, aux, flags, start, W)
    else:
        _decode_serial(vals, table, rowptr, mask, signs, V, aux, flags, start, W)
    return W
