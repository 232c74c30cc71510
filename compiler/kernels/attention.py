"""The KV-cache kernels of a KVLayout (TIR): cache append (RoPE on the keys, quantize on
store) and attention (online softmax, dequantization inside the dot products and the value
sum). kv_layouts.KVLayout describes the tensors; these kernels write and read them in place.

Bounded memory (sinks + window, as in StreamingLLM): the first `sinks` positions stay, and a
ring of `window + slack` slots holds the most recent positions; attention reads the sinks and
the last `window` positions. Keys are rotated with their true positions when appended, queries
with theirs, so every query-to-window distance is a real one, at most `window`; once positions
have been evicted, the sinks are scored as if they sat just before the oldest kept position
(the query is rotated a second time for them), so no distance exceeds sinks + window.

RoPE turns the first spec.rotary_dim dimensions of each head (pairs d and d + rotary_dim / 2)
and passes the rest through (Phi-4-mini's partial rotary); cos and sin are multiplied by
rope.magnitude(spec) (longrope's attention factor), keys as they are stored and queries alike.
"""

from __future__ import annotations

import math

from tvm.script import tirx as T

from .cache import cached_kernel
from .. import rope as rope_settings
from . import kv_codecs
from .common import HAND_WRITTEN, VEC, serial_or_parallel, vector_exp
from .kv_codecs import DOT_LANES

SCORE_CHUNK = VEC  # positions per online-softmax step: one vector of scores, one exp
# Below these sizes the kernels run on the calling thread: starting the pool's second thread
# costs more than a decode step's append or short-context attention (benchmarks/kv_cache.py).
SERIAL_APPENDS = 16  # (token, kv head) pairs appended
SERIAL_VISITS = 1024  # (query, head, cached position) triples attended


@cached_kernel
def append_kernel(layout, serial_appends: int = SERIAL_APPENDS):
    """Rotate the new keys, quantize keys and values, store them at their slots. The keys
    and values are heads [heads, heads + kv_heads) and [heads + kv_heads, heads + 2 kv_heads)
    of the fused q/k/v projection's output [n, heads + 2 kv_heads, head_dim]."""
    s = layout.spec
    layers, kv_heads, dim, half = layout.layer_count, s.num_kv_heads, s.head_dim, s.rotary_dim // 2
    heads, magnitude = s.num_heads, rope_settings.magnitude(s)
    key, value = heads, heads + kv_heads  # the first key head and value head in qkv
    dtype, storage, packed = layout.dtype, layout.storage_dtype, layout.packed_dim
    slot_of = _slot_of(layout)
    store = kv_codecs.STORE[dtype]
    scale_shape = _scales_shape(layout)

    @T.macro
    def append_token(t, n, capacity, sc, qkv, inv_freq, data, scales, start, layer):
        with T.sblock("append"):
            T.reads(qkv[0:n, key:key + 2 * kv_heads, 0:dim], inv_freq[0:half], start[0:1])
            T.writes(data[layer, 0:2, 0:kv_heads, 0:capacity, 0:packed],
                     scales[0:sc[0], 0:sc[1], 0:sc[2], 0:sc[3], 0:sc[4]])
            rope = T.sblock_alloc_buffer((1, 2, half), "float32")
            row = T.sblock_alloc_buffer((dim,), "float32")
            stat = T.sblock_alloc_buffer((2,), "float32")
            pos: T.let[T.int64] = start[0] + t
            slot: T.let[T.int64] = slot_of(pos)
            rope_table(rope, 0, pos, inv_freq, half, magnitude)
            for h in T.serial(kv_heads):
                for d in T.serial(half):
                    row[d] = qkv[t, key + h, d] * rope[0, 0, d] - qkv[t, key + h, d + half] * rope[0, 1, d]
                    row[d + half] = qkv[t, key + h, d + half] * rope[0, 0, d] + qkv[t, key + h, d] * rope[0, 1, d]
                if 2 * half < dim:
                    for d in T.serial(2 * half, dim):
                        row[d] = qkv[t, key + h, d]
                store(row, stat, data, scales, layer, 0, h, slot)
                for d in T.serial(dim):
                    row[d] = qkv[t, value + h, d]
                store(row, stat, data, scales, layer, 1, h, slot)

    @T.prim_func(private=True, s_tir=True)
    def kv_append(var_qkv: T.handle, inv_freq: T.Buffer((half,), "float32"),
                  var_data: T.handle, var_scales: T.handle, start: T.Buffer((1,), "int64"), layer: T.int64):
        T.func_attr(HAND_WRITTEN)
        n = T.int64()
        capacity = T.int64()
        qkv = T.match_buffer(var_qkv, (n, heads + 2 * kv_heads, dim), "float32")
        data = T.match_buffer(var_data, (layers, 2, kv_heads, capacity, packed), storage)
        sc = T.meta_var(scale_shape(capacity))
        scales = T.match_buffer(var_scales, sc, "float16")
        serial_or_parallel(n * kv_heads <= serial_appends, n, n, append_token,
                           (capacity, sc, qkv, inv_freq, data, scales, start, layer))

    return kv_append


@cached_kernel
def attention_kernel(layout, serial_visits: int = SERIAL_VISITS):
    """Causal attention of n new queries (un-rotated: heads [0, heads) of the fused q/k/v
    projection's output) over the cache, online softmax.

    One (query, head) pair per parallel task; grouped-query heads share their key/value
    head; dequantization happens inside the dot products and the value sum. Positions go
    in chunks of SCORE_CHUNK: one vector exp for their weights and one rescale of the running
    sum per chunk (per position, two scalar exps cost more than the dot products).
    """
    s = layout.spec
    layers, heads, kv_heads = layout.layer_count, s.num_heads, s.num_kv_heads
    dim, half, group = s.head_dim, s.rotary_dim // 2, s.num_heads // s.num_kv_heads
    magnitude = rope_settings.magnitude(s)
    storage, packed = layout.storage_dtype, layout.packed_dim
    scale = 1.0 / math.sqrt(s.query_pre_attn_scalar or dim)
    windowed, sinks, window = layout.windowed, layout.sinks, layout.window
    slot_of = _slot_of(layout)
    scale_shape = _scales_shape(layout)
    score, accumulate = kv_codecs.SCORE[layout.dtype], kv_codecs.ACCUMULATE[layout.dtype]

    @T.macro
    def rotate_query(dest, t, h, q, rope, r):
        """Query (t, h) rotated by rope[r] (cos, sin) and scaled by 1 / sqrt(head_dim) (Gemma: of
        query_pre_attn_scalar)."""
        for d in T.serial(half):
            dest[d] = (q[t, h, d] * rope[r, 0, d] - q[t, h, d + half] * rope[r, 1, d]) * T.float32(scale)
            dest[d + half] = (q[t, h, d + half] * rope[r, 0, d] + q[t, h, d] * rope[r, 1, d]) * T.float32(scale)
        if 2 * half < dim:
            for d in T.serial(2 * half, dim):
                dest[d] = q[t, h, d] * T.float32(scale)

    @T.macro
    def attend(query, qsum, st, part, acc, chunk, data, scales, layer, kh, first, count):
        """Online softmax over positions first .. first + count - 1, SCORE_CHUNK positions at a
        time: their scores, then one vector exp and one rescale of acc per chunk."""
        for c in T.serial((count + T.int64(SCORE_CHUNK - 1)) // T.int64(SCORE_CHUNK)):
            filled: T.let[T.int64] = T.min(T.int64(SCORE_CHUNK), count - c * T.int64(SCORE_CHUNK))
            for j in T.serial(filled):
                score(query, qsum, st, part, data, scales, layer, kh, slot_of(first + c * T.int64(SCORE_CHUNK) + j))
                chunk[j] = st[2]
            for j in T.serial(filled, T.int64(SCORE_CHUNK)):
                chunk[j] = T.float32(-3.0e38)
            new_max: T.let[T.float32] = T.max(st[0], T.call_llvm_pure_intrin(
                "float32", "llvm.vector.reduce.fmax", chunk[T.ramp(0, 1, SCORE_CHUNK)]))
            alpha: T.let[T.float32] = T.exp(st[0] - new_max)
            chunk[T.ramp(0, 1, SCORE_CHUNK)] = vector_exp(chunk[T.ramp(0, 1, SCORE_CHUNK)] - T.Broadcast(new_max, SCORE_CHUNK))
            for j in T.serial(filled, T.int64(SCORE_CHUNK)):
                chunk[j] = T.float32(0)
            st[1] = st[1] * alpha + T.call_llvm_pure_intrin(
                "float32", "llvm.vector.reduce.fadd", T.float32(0), chunk[T.ramp(0, 1, SCORE_CHUNK)])
            st[0] = new_max
            for d in T.vectorized(dim):
                acc[d] = acc[d] * alpha
            for j in T.serial(filled):
                accumulate(acc, chunk[j], data, scales, layer, kh, slot_of(first + c * T.int64(SCORE_CHUNK) + j))

    @T.macro
    def attend_one(th, _pairs, n, capacity, sc, q, rope, inv_freq, data, scales, start, layer, out):
        with T.sblock("attend"):
            T.reads(q[0:n, 0:heads, 0:dim], rope[0:n, 0:2, 0:half], inv_freq[0:half], start[0:1],
                    data[layer, 0:2, 0:kv_heads, 0:capacity, 0:packed],
                    scales[0:sc[0], 0:sc[1], 0:sc[2], 0:sc[3], 0:sc[4]])
            T.writes(out[0:n, 0:heads, 0:dim])
            query = T.sblock_alloc_buffer((dim,), "float32")
            acc = T.sblock_alloc_buffer((dim,), "float32")
            qsum = T.sblock_alloc_buffer((1,), "float32")
            st = T.sblock_alloc_buffer((3,), "float32")  # running max, denominator, score
            part = T.sblock_alloc_buffer((DOT_LANES,), "float32")
            chunk = T.sblock_alloc_buffer((SCORE_CHUNK,), "float32")  # scores, then weights
            t: T.let[T.int64] = th // heads
            h: T.let[T.int64] = th % heads
            kh: T.let[T.int64] = h // group
            qpos: T.let[T.int64] = start[0] + t
            for d in T.serial(dim):
                acc[d] = T.float32(0)
            st[0] = T.float32(-3.0e38)
            st[1] = T.float32(0)
            if windowed:
                oldest: T.let[T.int64] = T.max(T.int64(sinks), qpos - T.int64(window - 1))
                if oldest == T.int64(sinks):  # nothing evicted yet: one run, exactly as a dense cache
                    rotate_query(query, t, h, q, rope, t)
                    _sum(query, qsum, dim)
                    attend(query, qsum, st, part, acc, chunk, data, scales, layer, kh, T.int64(0), qpos + 1)
                else:
                    # sinks, scored as if just before the oldest kept position
                    sink_rope = T.sblock_alloc_buffer((1, 2, half), "float32")
                    rope_table(sink_rope, 0, qpos - oldest + T.int64(sinks), inv_freq, half, magnitude)
                    rotate_query(query, t, h, q, sink_rope, 0)
                    _sum(query, qsum, dim)
                    attend(query, qsum, st, part, acc, chunk, data, scales, layer, kh, T.int64(0),
                           T.int64(sinks))
                    rotate_query(query, t, h, q, rope, t)
                    _sum(query, qsum, dim)
                    attend(query, qsum, st, part, acc, chunk, data, scales, layer, kh, oldest,
                           qpos + 1 - oldest)
            else:
                rotate_query(query, t, h, q, rope, t)
                _sum(query, qsum, dim)
                attend(query, qsum, st, part, acc, chunk, data, scales, layer, kh, T.int64(0), qpos + 1)
            for d in T.serial(dim):
                out[t, h, d] = acc[d] / st[1]

    @T.prim_func(private=True, s_tir=True)
    def kv_attention(var_qkv: T.handle, inv_freq: T.Buffer((half,), "float32"), var_data: T.handle,
                     var_scales: T.handle, start: T.Buffer((1,), "int64"), layer: T.int64, var_out: T.handle):
        T.func_attr(HAND_WRITTEN)
        n = T.int64()
        capacity = T.int64()
        q = T.match_buffer(var_qkv, (n, heads + 2 * kv_heads, dim), "float32")  # only heads [0, heads) are read
        data = T.match_buffer(var_data, (layers, 2, kv_heads, capacity, packed), storage)
        sc = T.meta_var(scale_shape(capacity))
        scales = T.match_buffer(var_scales, sc, "float16")
        out = T.match_buffer(var_out, (n, heads, dim), "float32")
        rope = T.alloc_buffer((n, 2, half), "float32")  # each new position's cos and sin, for every head
        for t in T.serial(n):
            rope_table(rope, t, start[0] + t, inv_freq, half, magnitude)
        serial_or_parallel(n * heads * (start[0] + n) <= serial_visits, n * heads, n * heads, attend_one,
                           (n, capacity, sc, q, rope, inv_freq, data, scales, start, layer, out))

    return kv_attention


def _scales_shape(layout):
    """capacity -> the shape of the scales tensor (its placeholder for the float kinds)."""
    return lambda capacity: layout.tensor_shapes(capacity)[1][0]


def _slot_of(layout):
    """Position -> cache slot (an expression builder for the kernels): the identity, or the
    sinks then a ring of `ring` slots."""
    if not layout.windowed:
        return lambda pos: pos
    sinks, ring = layout.sinks, layout.ring
    return lambda pos: T.if_then_else(pos < T.int64(sinks), pos,
                                      T.int64(sinks) + T.floormod(pos - T.int64(sinks), T.int64(ring)))


@T.macro
def rope_table(rope, r, pos, inv_freq, half, magnitude):
    """rope[r] = cos and sin of every rotated pair's angle at `pos` (times magnitude), computed
    once per position and read by all of its heads: each value is a scalar libm call."""
    for d in T.serial(half):
        angle: T.let[T.float32] = T.Cast("float32", pos) * inv_freq[d]
        if magnitude == 1.0:
            rope[r, 0, d] = T.cos(angle)
            rope[r, 1, d] = T.sin(angle)
        else:
            rope[r, 0, d] = T.cos(angle) * T.float32(magnitude)
            rope[r, 1, d] = T.sin(angle) * T.float32(magnitude)


@T.macro
def _sum(query, qsum, dim):
    qsum[0] = T.float32(0)
    for d in T.serial(dim):
        qsum[0] = qsum[0] + query[d]
