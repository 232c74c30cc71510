"""KV-cache layouts: the cache's shape and the TIR kernels that write and read it.

The runtime owns the cache tensor and passes it to every compiled call; these kernels
update it in place. A layout is one replaceable piece: the decoder only asks it for
`cache_shape`, `append` and `attend`.

Dense layout: one tensor [layers, 2 (key, value), kv_heads, max_context, head_dim], so that
one head's keys over all positions are contiguous for the attention loop.
"""

from __future__ import annotations

import dataclasses
import math

from tvm.script import tirx as T

from .spec import DecoderSpec


@dataclasses.dataclass(frozen=True)
class DenseKVLayout:
    spec: DecoderSpec
    max_context: int
    dtype: str = "float32"

    name = "dense"

    @property
    def cache_shape(self) -> tuple[int, ...]:
        s = self.spec
        return (s.num_layers, 2, s.num_kv_heads, self.max_context, s.head_dim)

    @property
    def bytes_per_token(self) -> int:
        s = self.spec
        return s.num_layers * 2 * s.num_kv_heads * s.head_dim * _itemsize(self.dtype)

    def describe(self) -> dict:
        return {
            "layout": self.name,
            "dtype": self.dtype,
            "shape": list(self.cache_shape),
            "max_context": self.max_context,
            "bytes_per_token": self.bytes_per_token,
            "max_bytes": self.bytes_per_token * self.max_context,
        }

    def append_kernel(self):
        """cache[layer, :, :, start_pos:start_pos+n, :] = (k, v), in place."""
        s = self.spec
        layers, kv_heads, ctx, dim, dtype = s.num_layers, s.num_kv_heads, self.max_context, s.head_dim, self.dtype

        @T.prim_func(private=True, s_tir=True)
        def kv_append(var_k: T.handle, var_v: T.handle, var_cache: T.handle, layer: T.int64, start_pos: T.int64):
            T.func_attr({"op_pattern": 8})  # opaque: hand-written, never fused
            n = T.int64()
            k = T.match_buffer(var_k, (n, kv_heads, dim), "float32")
            v = T.match_buffer(var_v, (n, kv_heads, dim), "float32")
            cache = T.match_buffer(var_cache, (layers, 2, kv_heads, ctx, dim), dtype)
            for t, h, d in T.grid(n, kv_heads, dim):
                with T.sblock("append"):
                    vt, vh, vd = T.axis.remap("SSS", [t, h, d])
                    cache[layer, 0, vh, start_pos + vt, vd] = T.Cast(dtype, k[vt, vh, vd])
                    cache[layer, 1, vh, start_pos + vt, vd] = T.Cast(dtype, v[vt, vh, vd])

        return kv_append

    def attention_kernel(self):
        """Causal attention of n new queries over the cache up to start_pos + n.

        One (query, head) pair per parallel task, online softmax over the positions so no
        score buffer is needed, grouped-query heads share their key/value head.
        """
        s = self.spec
        layers, heads, kv_heads = s.num_layers, s.num_heads, s.num_kv_heads
        ctx, dim, dtype = self.max_context, s.head_dim, self.dtype
        group = heads // kv_heads
        scale = 1.0 / math.sqrt(dim)

        @T.prim_func(private=True, s_tir=True)
        def kv_attention(var_q: T.handle, var_cache: T.handle, layer: T.int64, start_pos: T.int64, var_out: T.handle):
            T.func_attr({"op_pattern": 8})  # opaque: hand-written, never fused
            n = T.int64()
            q = T.match_buffer(var_q, (n, heads, dim), "float32")
            cache = T.match_buffer(var_cache, (layers, 2, kv_heads, ctx, dim), dtype)
            out = T.match_buffer(var_out, (n, heads, dim), "float32")
            for th in T.parallel(n * heads):
                with T.sblock("attend"):
                    q_local = T.sblock_alloc_buffer((dim,), "float32")
                    acc = T.sblock_alloc_buffer((dim,), "float32")
                    state = T.sblock_alloc_buffer((3,), "float32")  # running max, denominator, score
                    T.reads(q[0:n, 0:heads, 0:dim], cache[layer, 0:2, 0:kv_heads, 0:ctx, 0:dim])
                    T.writes(out[0:n, 0:heads, 0:dim])
                    t: T.let[T.int64] = th // heads
                    h: T.let[T.int64] = th % heads
                    kh: T.let[T.int64] = h // group
                    for d in T.serial(dim):
                        q_local[d] = q[t, h, d] * T.float32(scale)
                        acc[d] = T.float32(0)
                    state[0] = T.float32(-3.0e38)
                    state[1] = T.float32(0)
                    for j in T.serial(start_pos + t + 1):
                        state[2] = T.float32(0)
                        for d in T.serial(dim):
                            state[2] = state[2] + q_local[d] * T.Cast("float32", cache[layer, 0, kh, j, d])
                        new_max: T.let[T.float32] = T.max(state[0], state[2])
                        alpha: T.let[T.float32] = T.exp(state[0] - new_max)
                        p: T.let[T.float32] = T.exp(state[2] - new_max)
                        state[1] = state[1] * alpha + p
                        for d in T.serial(dim):
                            acc[d] = acc[d] * alpha + p * T.Cast("float32", cache[layer, 1, kh, j, d])
                        state[0] = new_max
                    for d in T.serial(dim):
                        out[t, h, d] = acc[d] / state[1]

        return kv_attention


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "float16": 2}[dtype]
