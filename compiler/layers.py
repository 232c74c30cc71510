"""Linear layers and embedding tables in the recipe's weight format.

  f32, f16   dense weights in tiles of 16 output rows (kernels/dense.py); f16 is widened
             inside the matmul's loads, never copied
  q8, q4     packed blocks of 32 (kernels/layout.py, kernels/packed.py): activations quantized
             per row to int8, integer dot products, dequantization inside the kernel

The embedding table uses the same format; with tied embeddings the LM head reads the very
same (packed) tensors, so the table is stored once.
"""

from __future__ import annotations

import dataclasses
import json
from typing import NamedTuple

from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.target import Target

from .kernels import dense, embedding, norms, packed
from .kernels.layout import BLOCK, SCHEMES, PackedLayout
from .kernels.packing import DENSE_DTYPES, dense_shape


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    scheme: str
    tvm_target: str  # as JSON (a WeightFormat stays hashable); the kernels pick their instructions from it

    @property
    def quantized(self) -> bool:
        return self.scheme in SCHEMES


def _target(target: str) -> Target:
    return Target(json.loads(target))


class QuantizedRows(NamedTuple):
    """Activations quantized per row and 32-block (packed.quantize_block): what the packed
    formats' matmuls read. Made once per input and shared by the matmuls that read it."""
    xq: nn.Tensor
    xd: nn.Tensor
    xs: nn.Tensor


def quantize_rows(x: nn.Tensor) -> QuantizedRows:
    m, k = x.shape
    return QuantizedRows(*op.tensor_ir_op(packed.quantize_kernel(int(k)), "quantize_rows", [x],
                                          quantized_rows_placeholders(m, int(k))))


def quantized_rows_placeholders(m, k: int) -> list[nn.Tensor]:
    blocks = k // BLOCK
    return [nn.Tensor.placeholder((m, k // 4), "int32"), nn.Tensor.placeholder((m, blocks), "float32"),
            nn.Tensor.placeholder((m, blocks), "float32")]


def quantized_matmul(x: QuantizedRows, qs, scales, scheme: str, n: int, k: int, target: str):
    return op.tensor_ir_op(packed.matmul_kernel(scheme, n, k, _target(target)), f"matmul_{scheme}", [*x, qs, scales],
                           nn.Tensor.placeholder((x.xq.shape[0], n), "float32"))


class _Matrix(nn.Module):
    """A [rows, cols] weight matrix in the weight format, multiplied as x M^T. Parameters:
    "tiles" (dense formats) or "qs" and "scales" (packed), all made from the checkpoint's
    "<name>.weight" (compiler/weights.py)."""

    def _declare(self, rows: int, cols: int, fmt: WeightFormat) -> None:
        self.rows, self.cols, self.fmt = rows, cols, fmt
        if fmt.quantized:
            qs_shape, scales_shape = PackedLayout(fmt.scheme, rows, cols).shapes
            self.qs = nn.Parameter(qs_shape, "uint8")
            self.scales = nn.Parameter(scales_shape, "float16")
        else:
            self.tiles = nn.Parameter(dense_shape(rows, cols), DENSE_DTYPES[fmt.scheme])

    def _times(self, x):
        """x: f32 rows, or (packed formats) rows already quantized by a fused kernel."""
        if self.fmt.quantized:
            rows = x if isinstance(x, QuantizedRows) else quantize_rows(x)
            return quantized_matmul(rows, self.qs, self.scales, self.fmt.scheme, self.rows, self.cols, self.fmt.tvm_target)
        kernel = dense.matmul_kernel(self.rows, self.cols, self.tiles.dtype, _target(self.fmt.tvm_target))
        return op.tensor_ir_op(kernel, "matmul_dense", [x, self.tiles],
                               nn.Tensor.placeholder((x.shape[0], self.rows), "float32"))


class Linear(_Matrix):
    """y = x W^T (+ b). `parts`: ((checkpoint layer name, rows), ...) for a fused layer, whose
    W and b are its parts' stacked along the output rows (q/k/v, gate/up): one matmul call
    instead of two or three, and one pass over their shared input."""

    def __init__(self, in_features: int, out_features: int, bias: bool, fmt: WeightFormat,
                 parts: tuple[tuple[str, int], ...] = ()):
        if parts and sum(rows for _, rows in parts) != out_features:
            raise ValueError(f"fused parts {parts} do not add up to {out_features} output rows")
        self._declare(out_features, in_features, fmt)
        self.parts = parts
        self.bias = nn.Parameter((out_features,), "float32") if bias else None

    def forward(self, x):
        y = self._times(x)
        return y + self.bias if self.bias is not None else y


class Embedding(_Matrix):
    """The token table; lookups dequantize just the rows they read (and multiply them by `scale`,
    Gemma's sqrt(hidden), when given; the LM head of tied embeddings reads the table unscaled)."""

    def __init__(self, vocab: int, width: int, fmt: WeightFormat, scale: float | None = None):
        self._declare(vocab, width, fmt)
        self.scale = scale

    def lookup(self, tokens):
        out = nn.Tensor.placeholder((tokens.shape[0], self.cols), "float32")
        if self.fmt.quantized:
            kernel = embedding.packed_lookup_kernel(self.fmt.scheme, self.rows, self.cols, self.scale)
            return op.tensor_ir_op(kernel, "embed", [tokens, self.qs, self.scales], out)
        kernel = embedding.dense_lookup_kernel(self.rows, self.cols, self.tiles.dtype, self.scale)
        return op.tensor_ir_op(kernel, "embed", [tokens, self.tiles], out)

    def as_lm_head(self, hidden):
        """Logits against the same table (tied embeddings)."""
        return self._times(hidden)


class RMSNorm(nn.Module):
    """RMSNorm writing what the next matmul reads (f32 rows, or QuantizedRows for the packed
    formats; fmt None: always f32). Called with `delta`, it first adds it to the residual
    stream x and returns (x + delta, normed): one kernel (norms.rms_norm_kernel)."""

    def __init__(self, width: int, eps: float, fmt: WeightFormat | None):
        self.width, self.eps = width, eps
        self.quantized = fmt is not None and fmt.quantized
        self.weight = nn.Parameter((width,), "float32")

    def forward(self, x, delta=None):
        n = x.shape[0]
        kernel = norms.rms_norm_kernel(self.width, self.eps, delta is not None, self.quantized)
        outputs = (quantized_rows_placeholders(n, self.width) if self.quantized
                   else [nn.Tensor.placeholder((n, self.width), "float32")])
        if delta is None:
            result = op.tensor_ir_op(kernel, "rms_norm", [x, self.weight], outputs)
            return QuantizedRows(*result) if self.quantized else result
        total, *normed = op.tensor_ir_op(kernel, "add_rms_norm", [x, delta, self.weight],
                                         [nn.Tensor.placeholder((n, self.width), "float32"), *outputs])
        return total, (QuantizedRows(*normed) if self.quantized else normed[0])


def swiglu(gate_up, fmt: WeightFormat, activation: str = "silu"):
    """act(gate) * up from the fused gate/up output [n, 2 width], in the form the down
    projection reads (one kernel); act: silu, or gelu_tanh (GeGLU)."""
    n, width = gate_up.shape[0], int(gate_up.shape[1]) // 2
    kernel = norms.swiglu_kernel(width, fmt.quantized, activation)
    if fmt.quantized:
        return QuantizedRows(*op.tensor_ir_op(kernel, "swiglu", [gate_up], quantized_rows_placeholders(n, width)))
    return op.tensor_ir_op(kernel, "swiglu", [gate_up], nn.Tensor.placeholder((n, width), "float32"))


def head_norms(qkv, q_norm: "RMSNorm", k_norm: "RMSNorm", heads: int, kv_heads: int):
    """Qwen3's per-head RMSNorm of the queries and keys in the fused q/k/v output
    [n, heads + 2 kv_heads, head_dim] (one kernel; the values pass through)."""
    n, period, dim = qkv.shape[0], heads + 2 * kv_heads, q_norm.width
    kernel = norms.head_norm_kernel(heads, kv_heads, dim, q_norm.eps)
    rows = op.reshape(qkv, (n * period, dim))
    normed = op.tensor_ir_op(kernel, "head_norm", [rows, q_norm.weight, k_norm.weight],
                             nn.Tensor.placeholder((n * period, dim), "float32"))
    return op.reshape(normed, (n, period, dim))


def softcap(logits, cap: float):
    """cap * tanh(logits / cap) (Gemma's final logit soft-capping)."""
    n, width = logits.shape[0], int(logits.shape[1])
    return op.tensor_ir_op(norms.softcap_kernel(width, cap), "softcap", [logits],
                           nn.Tensor.placeholder((n, width), "float32"))
