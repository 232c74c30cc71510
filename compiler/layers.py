"""Linear layers and embedding tables in the recipe's weight format.

  f32, f16   dense weights ([out, in], read in place by the NT matmul schedule; f16 is widened
             inside the matmul's loads, never copied)
  q8, q4     packed blocks of 32 (compiler/quant.py): activations quantized per row to int8,
             integer dot products, dequantization inside the kernel

The embedding table uses the same format; with tied embeddings the LM head reads the very
same (packed) tensors, so the table is stored once.
"""

from __future__ import annotations

import dataclasses
import functools
import json

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.script import tirx as T
from tvm.target import Target

from . import quant

FORMATS = ("f32", "f16", "q8", "q4")
_DENSE_DTYPE = {"f32": "float32", "f16": "float16"}


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    scheme: str
    target: str  # the TVM target as JSON: the quantized kernels pick their instructions from it

    @property
    def quantized(self) -> bool:
        return self.scheme in quant.SCHEMES


@functools.lru_cache(maxsize=None)
def _linear_funcs(scheme: str, n: int, k: int, target: str):
    # Building a quantized kernel parses a large TVMScript function: once per shape.
    return quant.build_linear_funcs(scheme, n, k, Target(json.loads(target)))


def quantized_matmul(x, qs, scales, scheme: str, n: int, k: int, target: str):
    (_, quantize), (_, matmul) = _linear_funcs(scheme, n, k, target)
    m = x.shape[0]
    blocks = k // quant.BLOCK
    xq, xd, xs = op.tensor_ir_op(quantize, "quantize_rows", [x], [
        nn.Tensor.placeholder((m, k // 4), "int32"), nn.Tensor.placeholder((m, blocks), "float32"),
        nn.Tensor.placeholder((m, blocks), "float32")])
    return op.tensor_ir_op(matmul, f"matmul_{scheme}", [xq, xd, xs, qs, scales],
                           nn.Tensor.placeholder((m, n), "float32"))


def packed_shapes(scheme: str, n: int, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    rows = quant._tiles(n) * (k // quant.BLOCK)
    return (rows, quant._QBYTES[scheme]), (rows, quant._NSCALES[scheme])


class _Matrix(nn.Module):
    """A [rows, cols] weight matrix in the weight format, multiplied as x M^T. Parameter names
    follow nn.Linear's ("weight"), or "qs" and "scales" for the packed formats."""

    def _declare(self, rows: int, cols: int, fmt: WeightFormat) -> None:
        self.rows, self.cols, self.fmt = rows, cols, fmt
        if fmt.quantized:
            qs_shape, scales_shape = packed_shapes(fmt.scheme, rows, cols)
            self.qs = nn.Parameter(qs_shape, "uint8")
            self.scales = nn.Parameter(scales_shape, "float16")
        else:
            self.weight = nn.Parameter((rows, cols), _DENSE_DTYPE[fmt.scheme])

    def _times(self, x):
        if self.fmt.quantized:
            return quantized_matmul(x, self.qs, self.scales, self.fmt.scheme, self.rows, self.cols, self.fmt.target)
        weight = self.weight
        if weight.dtype != "float32":
            weight = op.astype(weight, "float32")  # fused into the matmul's loads
        return op.matmul(x, op.permute_dims(weight))


class Linear(_Matrix):
    """y = x W^T (+ b)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: WeightFormat):
        self._declare(out_features, in_features, fmt)
        self.bias = nn.Parameter((out_features,), "float32") if bias else None

    def forward(self, x):
        y = self._times(x)
        return y + self.bias if self.bias is not None else y


class Embedding(_Matrix):
    """The token table; lookups dequantize just the rows they read."""

    def __init__(self, vocab: int, width: int, fmt: WeightFormat):
        self._declare(vocab, width, fmt)

    def lookup(self, tokens):
        out = nn.Tensor.placeholder((tokens.shape[0], self.cols), "float32")
        if self.fmt.quantized:
            kernel = _packed_lookup_kernel(self.fmt.scheme, self.rows, self.cols)
            return op.tensor_ir_op(kernel, "embed", [tokens, self.qs, self.scales], out)
        kernel = _dense_lookup_kernel(self.rows, self.cols, self.weight.dtype)
        return op.tensor_ir_op(kernel, "embed", [tokens, self.weight], out)

    def as_lm_head(self, hidden):
        """Logits against the same table (tied embeddings)."""
        return self._times(hidden)


def _dense_lookup_kernel(vocab: int, width: int, dtype: str):
    @T.prim_func(private=True, s_tir=True)
    def embed(var_tokens: T.handle, table: T.Buffer((vocab, width), dtype), var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        n = T.int64()
        tokens = T.match_buffer(var_tokens, (n,), "int32")
        out = T.match_buffer(var_out, (n, width), "float32")
        for t, i in T.grid(n, width):
            with T.sblock("embed"):
                vt, vi = T.axis.remap("SS", [t, i])
                out[vt, vi] = T.Cast("float32", table[T.Cast("int64", tokens[vt]), vi])

    return embed


def _packed_lookup_kernel(scheme: str, vocab: int, width: int):
    """Rows of a packed table (the layout of quant.pack: tiles of 16 rows, blocks of 32)."""
    (rows, qbytes), (_, nscales) = packed_shapes(scheme, vocab, width)
    tiles, blocks, chunk, q4 = quant._tiles(vocab), width // quant.BLOCK, quant.CHUNK, scheme == "q4"

    @T.prim_func(private=True, s_tir=True)
    def embed(var_tokens: T.handle, qs: T.Buffer((rows, qbytes), "uint8"),
              scales: T.Buffer((rows, nscales), "float16"), var_out: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        n = T.int64()
        tokens = T.match_buffer(var_tokens, (n,), "int32")
        out = T.match_buffer(var_out, (n, width), "float32")
        for t, i in T.grid(n, T.int64(width)):
            with T.sblock("embed"):
                vt, vi = T.axis.remap("SS", [t, i])
                token: T.let[T.int64] = T.Cast("int64", tokens[vt])
                tile: T.let[T.int64] = token // 16
                lane: T.let[T.int64] = token % 16
                b: T.let[T.int64] = vi // 32
                c: T.let[T.int64] = b // chunk
                p: T.let[T.int64] = c * chunk * tiles + tile * T.min(T.int64(chunk), blocks - c * chunk) + b % chunk
                w: T.let[T.int64] = vi % 32
                if q4:
                    byte: T.let[T.uint8] = qs[p, 64 * ((w % 16) // 4) + 4 * lane + w % 4]
                    nibble: T.let[T.uint8] = T.if_then_else(w < 16, byte & T.uint8(15), byte >> T.uint8(4))
                    out[vt, vi] = T.Cast("float32", nibble) * T.Cast("float32", scales[p, lane]) \
                        + T.Cast("float32", scales[p, 16 + lane])
                else:
                    out[vt, vi] = (T.Cast("float32", qs[p, 64 * (w // 4) + 4 * lane + w % 4]) - T.float32(128)) \
                        * T.Cast("float32", scales[p, lane])

    return embed
