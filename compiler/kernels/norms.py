"""Row-wise kernels between the matmuls, fused with their neighbours (TIR).

  rms_norm   y = x / rms(x) * w; with `residual`, s = x + delta is written out first (the new
             residual stream) and normalized
  swiglu     y = act(gate) * up from the fused gate/up output, with a vectorized exp; act is
             silu (SwiGLU) or the tanh GELU (Gemma's GeGLU)
  head_norm  Qwen3's RMSNorm of each query and key head of the fused q/k/v output
  softcap    y = cap * tanh(x / cap) (Gemma's final logits)

rms_norm and swiglu write what the next matmul reads: f32 rows for the dense formats, or the
int8 blocks of packed.quantize_block (xq, xd, xs) for the packed ones, so no separate quantize
pass runs. Every row is computed by the same code whatever the number of rows, so a decode
step and a verify pass give bit-identical results for the same position (a target drafting
for itself has every token accepted).
"""

from __future__ import annotations

import math

from tvm.script import tirx as T

from .cache import cached_kernel
from .common import HAND_WRITTEN, VEC, serial_or_parallel, splat, vector_exp
from .layout import BLOCK
from .packed import SERIAL_QUANTIZE, match_quantized_rows, quantize_block

SERIAL_ELEMENTS = SERIAL_QUANTIZE  # rows * width below which a row kernel runs on the calling thread


def _vec(i):
    return T.ramp(i * VEC, 1, VEC)


@T.macro
def _inverse_rms(src, row, width, eps, part, stat):
    part[_vec(0)] = splat(0.0)
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


# tanh(u) = 1 - 2 / (1 + exp(2u)), so the tanh GELU 0.5 g (1 + tanh(u)) is g / (1 + exp(-2u)),
# u = sqrt(2 / pi) (g + 0.044715 g^3): the form of silu, g / (1 + exp(-g)), with another exponent.
_GELU_C1 = -2.0 * math.sqrt(2.0 / math.pi)
_GELU_C3 = _GELU_C1 * 0.044715
GATE_EXPONENTS = {"silu": lambda g: T.float32(0) - g,
                  "gelu_tanh": lambda g: g * (T.float32(_GELU_C1) + T.float32(_GELU_C3) * g * g)}


@T.macro
def _swiglu_row(dest, dest_row, gate_up, row, width, exponent):
    """gate: gate_up[row, 0:width], up: gate_up[row, width:2 width]; act(g) = g / (1 + exp(exponent(g)))."""
    for c in T.serial(width // VEC):
        dest[dest_row, _vec(c)] = gate_up[row, _vec(c)] / (splat(1.0) + vector_exp(exponent(gate_up[row, _vec(c)]))) \
            * gate_up[row, T.ramp(width + c * VEC, 1, VEC)]
    for d in T.serial(width // VEC * VEC, width):
        dest[dest_row, d] = gate_up[row, d] / (T.float32(1) + T.exp(exponent(gate_up[row, d]))) \
            * gate_up[row, width + d]


@T.macro
def _quantize_local(normed, xq, xd, xs, q, row, width):
    for b in T.serial(width // BLOCK):
        quantize_block(normed, 0, xq, xd, xs, q, row, b)


@cached_kernel
def rms_norm_kernel(width: int, eps: float, residual: bool, quantized: bool):
    """(x, [delta], weight) -> ([x + delta], y) or ([x + delta], xq, xd, xs)."""
    blocks = width // BLOCK

    @T.macro
    def norm(src, weight, row, y):
        with T.sblock("rms_norm"):
            T.reads(src[row, 0:width], weight[0:width])
            T.writes(y[row, 0:width])
            part = T.sblock_alloc_buffer((VEC,), "float32")
            stat = T.sblock_alloc_buffer((1,), "float32")
            _inverse_rms(src, row, width, eps, part, stat)
            _scale_row(y, row, src, row, weight, width, stat)

    @T.macro
    def norm_quantize(src, weight, row, xq, xd, xs):
        with T.sblock("rms_norm_quantize"):
            T.reads(src[row, 0:width], weight[0:width])
            T.writes(xq[row, 0:width // 4], xd[row, 0:blocks], xs[row, 0:blocks])
            part = T.sblock_alloc_buffer((VEC,), "float32")
            stat = T.sblock_alloc_buffer((1,), "float32")
            normed = T.sblock_alloc_buffer((1, width), "float32")
            q = T.sblock_alloc_buffer((BLOCK,), "int32")
            _inverse_rms(src, row, width, eps, part, stat)
            _scale_row(normed, 0, src, row, weight, width, stat)
            _quantize_local(normed, xq, xd, xs, q, row, width)

    @T.macro
    def add(x, delta, row, s):
        with T.sblock("residual_add"):
            T.reads(x[row, 0:width], delta[row, 0:width])
            T.writes(s[row, 0:width])
            _add_rows(s, x, delta, row, width)

    @T.macro
    def norm_row(row, _rows, x, weight, y):
        norm(x, weight, row, y)

    @T.macro
    def norm_quantize_row(row, _rows, x, weight, xq, xd, xs):
        norm_quantize(x, weight, row, xq, xd, xs)

    @T.macro
    def add_norm_row(row, _rows, x, delta, weight, s, y):
        add(x, delta, row, s)
        norm(s, weight, row, y)

    @T.macro
    def add_norm_quantize_row(row, _rows, x, delta, weight, s, xq, xd, xs):
        add(x, delta, row, s)
        norm_quantize(s, weight, row, xq, xd, xs)

    # One PrimFunc per signature; only the one asked for is parsed.
    if not residual and not quantized:
        @T.prim_func(private=True, s_tir=True)
        def rms_norm(var_x: T.handle, weight: T.Buffer((width,), "float32"), var_y: T.handle):
            T.func_attr(HAND_WRITTEN)
            n = T.int64()
            x = T.match_buffer(var_x, (n, width), "float32")
            y = T.match_buffer(var_y, (n, width), "float32")
            serial_or_parallel(n * width < SERIAL_ELEMENTS, n, n, norm_row, (x, weight, y))
        return rms_norm

    if not residual:
        @T.prim_func(private=True, s_tir=True)
        def rms_norm_quantize(var_x: T.handle, weight: T.Buffer((width,), "float32"), var_xq: T.handle,
                              var_xd: T.handle, var_xs: T.handle):
            T.func_attr(HAND_WRITTEN)
            n = T.int64()
            x = T.match_buffer(var_x, (n, width), "float32")
            xq, xd, xs = match_quantized_rows(n, width, var_xq, var_xd, var_xs)
            serial_or_parallel(n * width < SERIAL_ELEMENTS, n, n, norm_quantize_row, (x, weight, xq, xd, xs))
        return rms_norm_quantize

    if not quantized:
        @T.prim_func(private=True, s_tir=True)
        def add_rms_norm(var_x: T.handle, var_delta: T.handle, weight: T.Buffer((width,), "float32"),
                         var_s: T.handle, var_y: T.handle):
            T.func_attr(HAND_WRITTEN)
            n = T.int64()
            x = T.match_buffer(var_x, (n, width), "float32")
            delta = T.match_buffer(var_delta, (n, width), "float32")
            s = T.match_buffer(var_s, (n, width), "float32")
            y = T.match_buffer(var_y, (n, width), "float32")
            serial_or_parallel(n * width < SERIAL_ELEMENTS, n, n, add_norm_row, (x, delta, weight, s, y))
        return add_rms_norm

    @T.prim_func(private=True, s_tir=True)
    def add_rms_norm_quantize(var_x: T.handle, var_delta: T.handle, weight: T.Buffer((width,), "float32"),
                              var_s: T.handle, var_xq: T.handle, var_xd: T.handle, var_xs: T.handle):
        T.func_attr(HAND_WRITTEN)
        n = T.int64()
        x = T.match_buffer(var_x, (n, width), "float32")
        delta = T.match_buffer(var_delta, (n, width), "float32")
        s = T.match_buffer(var_s, (n, width), "float32")
        xq, xd, xs = match_quantized_rows(n, width, var_xq, var_xd, var_xs)
        serial_or_parallel(n * width < SERIAL_ELEMENTS, n, n, add_norm_quantize_row,
                           (x, delta, weight, s, xq, xd, xs))
    return add_rms_norm_quantize


@cached_kernel
def swiglu_kernel(width: int, quantized: bool, activation: str = "silu"):
    """gate_up [n, 2 width] (gate, then up) -> y = act(gate) * up, or its int8 blocks (xq, xd, xs);
    act: silu or gelu_tanh (GATE_EXPONENTS)."""
    blocks = width // BLOCK
    exponent = GATE_EXPONENTS[activation]

    @T.macro
    def swiglu_row(row, _rows, gate_up, y):
        with T.sblock("swiglu"):
            T.reads(gate_up[row, 0:2 * width])
            T.writes(y[row, 0:width])
            _swiglu_row(y, row, gate_up, row, width, exponent)

    @T.macro
    def swiglu_quantize_row(row, _rows, gate_up, xq, xd, xs):
        with T.sblock("swiglu_quantize"):
            T.reads(gate_up[row, 0:2 * width])
            T.writes(xq[row, 0:width // 4], xd[row, 0:blocks], xs[row, 0:blocks])
            product = T.sblock_alloc_buffer((1, width), "float32")
            q = T.sblock_alloc_buffer((BLOCK,), "int32")
            _swiglu_row(product, 0, gate_up, row, width, exponent)
            _quantize_local(product, xq, xd, xs, q, row, width)

    if not quantized:
        @T.prim_func(private=True, s_tir=True)
        def swiglu(var_gate_up: T.handle, var_y: T.handle):
            T.func_attr(HAND_WRITTEN)
            n = T.int64()
            gate_up = T.match_buffer(var_gate_up, (n, 2 * width), "float32")
            y = T.match_buffer(var_y, (n, width), "float32")
            serial_or_parallel(n * width < SERIAL_ELEMENTS, n, n, swiglu_row, (gate_up, y))
        return swiglu

    @T.prim_func(private=True, s_tir=True)
    def swiglu_quantize(var_gate_up: T.handle, var_xq: T.handle, var_xd: T.handle, var_xs: T.handle):
        T.func_attr(HAND_WRITTEN)
        n = T.int64()
        gate_up = T.match_buffer(var_gate_up, (n, 2 * width), "float32")
        xq, xd, xs = match_quantized_rows(n, width, var_xq, var_xd, var_xs)
        serial_or_parallel(n * width < SERIAL_ELEMENTS, n, n, swiglu_quantize_row, (gate_up, xq, xd, xs))
    return swiglu_quantize


@cached_kernel
def head_norm_kernel(heads: int, kv_heads: int, dim: int, eps: float):
    """(qkv [n * (heads + 2 kv_heads), dim], q_weight, k_weight) -> the same rows with every
    query head normalized by q_weight and every key head by k_weight, value heads copied."""
    period = heads + 2 * kv_heads

    @T.macro
    def head_row(row, _rows, x, q_weight, k_weight, y):
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
        T.func_attr(HAND_WRITTEN)
        rows = T.int64()
        x = T.match_buffer(var_x, (rows, dim), "float32")
        y = T.match_buffer(var_y, (rows, dim), "float32")
        serial_or_parallel(rows * dim < SERIAL_ELEMENTS, rows, rows, head_row, (x, q_weight, k_weight, y))
    return head_norm


@cached_kernel
def softcap_kernel(width: int, cap: float):
    """x [n, width] -> cap * tanh(x / cap), tanh(z) = 1 - 2 / (1 + exp(2z)) with a vectorized exp."""
    @T.macro
    def softcap_row(row, _rows, x, y):
        with T.sblock("softcap"):
            T.reads(x[row, 0:width])
            T.writes(y[row, 0:width])
            for c in T.serial(width // VEC):
                y[row, _vec(c)] = splat(cap) - splat(2.0 * cap) / (
                    splat(1.0) + vector_exp(x[row, _vec(c)] * splat(2.0 / cap)))
            for d in T.serial(width // VEC * VEC, width):
                y[row, d] = T.float32(cap) - T.float32(2.0 * cap) / (
                    T.float32(1) + T.exp(x[row, d] * T.float32(2.0 / cap)))

    @T.prim_func(private=True, s_tir=True)
    def softcap(var_x: T.handle, var_y: T.handle):
        T.func_attr(HAND_WRITTEN)
        n = T.int64()
        x = T.match_buffer(var_x, (n, width), "float32")
        y = T.match_buffer(var_y, (n, width), "float32")
        serial_or_parallel(n * width < SERIAL_ELEMENTS, n, n, softcap_row, (x, y))
    return softcap
