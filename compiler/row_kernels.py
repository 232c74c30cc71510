"""Row-wise kernels between the matmuls, fused with their neighbours (hand-written TIR).

  rms_norm   y = x / rms(x) * w. With `residual`, the residual add before the norm is fused
             in: s = x + delta is written out (the new residual stream) and normalized.
  swiglu     y = silu(gate) * up, with a vectorized exp (TVM's exp is a libm call per lane);
             gate and up are the two halves of the fused gate/up projection's output.
  head_norm  Qwen3's RMSNorm of each query and key head, on the fused q/k/v output.

Each writes the form its next matmul reads: f32 rows for the dense weight formats, or the
int8 blocks of quant.quantize_block (xq, xd, xs) for the packed ones, so no separate
quantize pass runs and q/k/v (gate/up) share one.

Every row is computed by the same code whatever the number of rows. A decode step (one row)
and a verify pass (k + 1 rows) therefore give bit-identical results for the same position,
which TVM's own RMSNorm schedules did not (they differ between a static row and a dynamic
count); with it, a target drafting for itself has every token accepted.
"""

from __future__ import annotations

import functools

from tvm.script import tirx as T

from . import quant

VEC = 16  # lanes per vector expression: one AVX-512 register; LLVM splits them for narrower ISAs
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def _splat(value: float):
    return T.Broadcast(T.float32(value), VEC)


def vector_exp(x):
    """exp of a float32xVEC expression: 2^round(t) times a degree-6 polynomial of 2^f on
    |f| <= 1/2 (relative error about 2e-7), t = x log2(e) clamped to the normal range."""
    t = T.max(T.min(x * _splat(LOG2E), _splat(126.0)), _splat(-126.0))
    whole = T.floor(t + _splat(0.5))
    f = (t - whole) * _splat(LN2)
    poly = _splat(1.0 / 720)
    for c in (1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
        poly = poly * f + _splat(c)
    power = T.reinterpret(f"float32x{VEC}", T.shift_left(T.Cast(f"int32x{VEC}", whole)
                                                        + T.Broadcast(T.int32(127), VEC),
                                                        T.Broadcast(T.int32(23), VEC)))
    return poly * power


def _vec(i):
    return T.ramp(i * VEC, 1, VEC)


@T.macro
def _inverse_rms(src, row, width, eps, part, stat):
    part[_vec(0)] = _splat(0.0)
    for c in T.serial(width // VEC):
        part[_vec(0)] = part[_vec(0)] + src[row, _vec(c)] * src[row, _vec(c)]
    stat[0] = T.call_llvm_pure_intrin("float32", "llvm.vector.reduce.fadd", T.float32(0), part[_vec(0)])
    for d in T.serial(width // VEC * VEC, width):
        stat[0] = stat[0] + src[row, d] * src[row, d]
    stat[0] = T.float32(1) / T.sqrt(stat[0] / T.float32(width) + T.float32(eps))


@T.macro
def _scale_row(dest, dest_row, src, row, weight, width, stat):
    for c in T.serial(width // VEC):
        dest[dest_row, _vec(c)] = src[row, _vec(c)] * T.Broadcast(stat[0], VEC) * weight[_vec(c)]
    for d in T.serial(width // VEC * VEC, width):
        dest[dest_row, d] = src[row, d] * stat[0] * weight[d]


@T.macro
def _add_rows(out, x, delta, row, width):
    for c in T.serial(width // VEC):
        out[row, _vec(c)] = x[row, _vec(c)] + delta[row, _vec(c)]
    for d in T.serial(width // VEC * VEC, width):
        out[row, d] = x[row, d] + delta[row, d]


@T.macro
def _swiglu_row(dest, dest_row, gate_up, row, width):
    """gate: gate_up[row, 0:width], up: gate_up[row, width:2 width]."""
    for c in T.serial(width // VEC):
        dest[dest_row, _vec(c)] = gate_up[row, _vec(c)] / (_splat(1.0) + vector_exp(T.float32(0) - gate_up[row, _vec(c)])) \
            * gate_up[row, T.ramp(width + c * VEC, 1, VEC)]
    for d in T.serial(width // VEC * VEC, width):
        dest[dest_row, d] = gate_up[row, d] / (T.float32(1) + T.exp(T.float32(0) - gate_up[row, d])) \
            * gate_up[row, width + d]


@T.macro
def _quantize_local(normed, xq, xd, xs, q, row, width):
    for b in T.serial(width // quant.BLOCK):
        quant.quantize_block(normed, 0, xq, xd, xs, q, row, b)


def _rows(n, width):
    """Rows run on the calling thread for small calls (decode, verify): waking a pool costs more."""
    return n * width < quant.SERIAL_QUANTIZE


@functools.lru_cache(maxsize=None)
def rms_norm_kernel(width: int, eps: float, residual: bool, quantized: bool):
    """(x, [delta], weight) -> ([x + delta], y) or ([x + delta], xq, xd, xs)."""
    if quantized and width % quant.BLOCK:
        raise ValueError(f"a quantized RMSNorm needs a width that is a multiple of {quant.BLOCK}, got {width}")
    blocks = width // quant.BLOCK

    @T.macro
    def norm_row(src, weight, y, row):
        with T.sblock("rms_norm"):
            T.reads(src[row, 0:width], weight[0:width])
            T.writes(y[row, 0:width])
            part = T.sblock_alloc_buffer((VEC,), "float32")
            stat = T.sblock_alloc_buffer((1,), "float32")
            _inverse_rms(src, row, width, eps, part, stat)
            _scale_row(y, row, src, row, weight, width, stat)

    @T.macro
    def norm_quantize_row(src, weight, xq, xd, xs, row):
        with T.sblock("rms_norm_quantize"):
            T.reads(src[row, 0:width], weight[0:width])
            T.writes(xq[row, 0:width // 4], xd[row, 0:blocks], xs[row, 0:blocks])
            part = T.sblock_alloc_buffer((VEC,), "float32")
            stat = T.sblock_alloc_buffer((1,), "float32")
            normed = T.sblock_alloc_buffer((1, width), "float32")
            q = T.sblock_alloc_buffer((quant.BLOCK,), "int32")
            _inverse_rms(src, row, width, eps, part, stat)
            _scale_row(normed, 0, src, row, weight, width, stat)
            _quantize_local(normed, xq, xd, xs, q, row, width)

    @T.macro
    def add_row(x, delta, s, row):
        with T.sblock("residual_add"):
            T.reads(x[row, 0:width], delta[row, 0:width])
            T.writes(s[row, 0:width])
            _add_rows(s, x, delta, row, width)

    if not residual and not quantized:
        @T.prim_func(private=True, s_tir=True)
        def rms_norm(var_x: T.handle, weight: T.Buffer((width,), "float32"), var_y: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
            n = T.int64()
            x = T.match_buffer(var_x, (n, width), "float32")
            y = T.match_buffer(var_y, (n, width), "float32")
            if _rows(n, width):
                for row in T.serial(n):
                    norm_row(x, weight, y, row)
            else:
                for row in T.parallel(n):
                    norm_row(x, weight, y, row)
        return rms_norm

    if not residual:
        @T.prim_func(private=True, s_tir=True)
        def rms_norm_quantize(var_x: T.handle, weight: T.Buffer((width,), "float32"), var_xq: T.handle,
                              var_xd: T.handle, var_xs: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
            n = T.int64()
            x = T.match_buffer(var_x, (n, width), "float32")
            xq = T.match_buffer(var_xq, (n, width // 4), "int32")
            xd = T.match_buffer(var_xd, (n, blocks), "float32")
            xs = T.match_buffer(var_xs, (n, blocks), "float32")
            if _rows(n, width):
                for row in T.serial(n):
                    norm_quantize_row(x, weight, xq, xd, xs, row)
            else:
                for row in T.parallel(n):
                    norm_quantize_row(x, weight, xq, xd, xs, row)
        return rms_norm_quantize

    if not quantized:
        @T.prim_func(private=True, s_tir=True)
        def add_rms_norm(var_x: T.handle, var_delta: T.handle, weight: T.Buffer((width,), "float32"),
                         var_s: T.handle, var_y: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
            n = T.int64()
            x = T.match_buffer(var_x, (n, width), "float32")
            delta = T.match_buffer(var_delta, (n, width), "float32")
            s = T.match_buffer(var_s, (n, width), "float32")
            y = T.match_buffer(var_y, (n, width), "float32")
            if _rows(n, width):
                for row in T.serial(n):
                    add_row(x, delta, s, row)
                    norm_row(s, weight, y, row)
            else:
                for row in T.parallel(n):
                    add_row(x, delta, s, row)
                    norm_row(s, weight, y, row)
        return add_rms_norm

    @T.prim_func(private=True, s_tir=True)
    def add_rms_norm_quantize(var_x: T.handle, var_delta: T.handle, weight: T.Buffer((width,), "float32"),
                              var_s: T.handle, var_xq: T.handle, var_xd: T.handle, var_xs: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        n = T.int64()
        x = T.match_buffer(var_x, (n, width), "float32")
        delta = T.match_buffer(var_delta, (n, width), "float32")
        s = T.match_buffer(var_s, (n, width), "float32")
        xq = T.match_buffer(var_xq, (n, width // 4), "int32")
        xd = T.match_buffer(var_xd, (n, blocks), "float32")
        xs = T.match_buffer(var_xs, (n, blocks), "float32")
        if _rows(n, width):
            for row in T.serial(n):
                add_row(x, delta, s, row)
                norm_quantize_row(s, weight, xq, xd, xs, row)
        else:
            for row in T.parallel(n):
                add_row(x, delta, s, row)
                norm_quantize_row(s, weight, xq, xd, xs, row)
    return add_rms_norm_quantize


@functools.lru_cache(maxsize=None)
def swiglu_kernel(width: int, quantized: bool):
    """gate_up [n, 2 width] (gate, then up) -> y = silu(gate) * up, or its int8 blocks (xq, xd, xs)."""
    blocks = width // quant.BLOCK

    @T.macro
    def swiglu_row(gate_up, y, row):
        with T.sblock("swiglu"):
            T.reads(gate_up[row, 0:2 * width])
            T.writes(y[row, 0:width])
            _swiglu_row(y, row, gate_up, row, width)

    if not quantized:
        @T.prim_func(private=True, s_tir=True)
        def swiglu(var_gate_up: T.handle, var_y: T.handle):
            T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
            n = T.int64()
            gate_up = T.match_buffer(var_gate_up, (n, 2 * width), "float32")
            y = T.match_buffer(var_y, (n, width), "float32")
            if _rows(n, width):
                for row in T.serial(n):
                    swiglu_row(gate_up, y, row)
            else:
                for row in T.parallel(n):
                    swiglu_row(gate_up, y, row)
        return swiglu

    if width % quant.BLOCK:
        raise ValueError(f"a quantized SwiGLU needs a width that is a multiple of {quant.BLOCK}, got {width}")

    @T.macro
    def swiglu_quantize_row(gate_up, xq, xd, xs, row):
        with T.sblock("swiglu_quantize"):
            T.reads(gate_up[row, 0:2 * width])
            T.writes(xq[row, 0:width // 4], xd[row, 0:blocks], xs[row, 0:blocks])
            product = T.sblock_alloc_buffer((1, width), "float32")
            q = T.sblock_alloc_buffer((quant.BLOCK,), "int32")
            _swiglu_row(product, 0, gate_up, row, width)
            _quantize_local(product, xq, xd, xs, q, row, width)

    @T.prim_func(private=True, s_tir=True)
    def swiglu_quantize(var_gate_up: T.handle, var_xq: T.handle, var_xd: T.handle, var_xs: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        n = T.int64()
        gate_up = T.match_buffer(var_gate_up, (n, 2 * width), "float32")
        xq = T.match_buffer(var_xq, (n, width // 4), "int32")
        xd = T.match_buffer(var_xd, (n, blocks), "float32")
        xs = T.match_buffer(var_xs, (n, blocks), "float32")
        if _rows(n, width):
            for row in T.serial(n):
                swiglu_quantize_row(gate_up, xq, xd, xs, row)
        else:
            for row in T.parallel(n):
                swiglu_quantize_row(gate_up, xq, xd, xs, row)
    return swiglu_quantize


@functools.lru_cache(maxsize=None)
def head_norm_kernel(heads: int, kv_heads: int, dim: int, eps: float):
    """(qkv [n * (heads + 2 kv_heads), dim], q_weight, k_weight) -> the same rows with every
    query head normalized by q_weight and every key head by k_weight, value heads copied."""
    period = heads + 2 * kv_heads

    @T.macro
    def head_row(x, q_weight, k_weight, y, row):
        with T.sblock("head_norm"):
            T.reads(x[row, 0:dim], q_weight[0:dim], k_weight[0:dim])
            T.writes(y[row, 0:dim])
            part = T.sblock_alloc_buffer((VEC,), "float32")
            stat = T.sblock_alloc_buffer((1,), "float32")
            head: T.let[T.int64] = row % period
            if head < heads:
                _inverse_rms(x, row, dim, eps, part, stat)
                _scale_row(y, row, x, row, q_weight, dim, stat)
            elif head < heads + kv_heads:
                _inverse_rms(x, row, dim, eps, part, stat)
                _scale_row(y, row, x, row, k_weight, dim, stat)
            else:
                for d in T.serial(dim):
                    y[row, d] = x[row, d]

    @T.prim_func(private=True, s_tir=True)
    def head_norm(var_x: T.handle, q_weight: T.Buffer((dim,), "float32"), k_weight: T.Buffer((dim,), "float32"),
                  var_y: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        rows = T.int64()
        x = T.match_buffer(var_x, (rows, dim), "float32")
        y = T.match_buffer(var_y, (rows, dim), "float32")
        if _rows(rows, dim):
            for row in T.serial(rows):
                head_row(x, q_weight, k_weight, y, row)
        else:
            for row in T.parallel(rows):
                head_row(x, q_weight, k_weight, y, row)
    return head_norm
