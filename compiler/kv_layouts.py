"""KV-cache layouts: the cache tensors' shapes and the fused TIR kernels that write and read them.

The runtime owns the cache tensors (it allocates what the manifest lists) and passes them to
every compiled call; `kv_append` and `kv_attention` update and read them in place. The layout
(storage dtype, window, sinks) is chosen by the recipe and fixed at compile time; dtypes:

  f32 / f16          plain values
  int8               symmetric, one f16 scale per token and head
  int4               asymmetric, one f16 scale and f16 minimum per token and head,
                     two values per byte (low nibble first)

Quantize-on-append happens inside `kv_append` (which also applies RoPE to the keys) and
dequantization inside `kv_attention`'s loops: there is no separate pass over the cache.

Tensors: data [layers, 2 (k, v), kv_heads, capacity, packed head_dim] and, for the integer
dtypes, scales [layers, 2, kv_heads, capacity, 1 or 2] in f16. `capacity` is symbolic: the
runtime sizes the cache for each request.

Bounded memory (sinks + window, as in StreamingLLM): the first `sinks` positions stay, and a
ring of `window + slack` slots holds the most recent positions; attention reads the sinks
and the last `window` positions. The slack lets a call append up to `slack` tokens (a verify
pass, a prefill chunk) and roll back without losing a kept token. Positions: keys are rotated
with their true positions when appended, queries with theirs, so every query-to-window
distance is a real one, at most `window`; once positions have been evicted, the sinks are
scored as if they sat just before the oldest kept position (the query is rotated a second
time for them), so no distance exceeds sinks + window and the model never sees a longer
one than it would in its window.
"""

from __future__ import annotations

import dataclasses
import math

from tvm.script import tirx as T

from air.runtime.contract import CAPACITY, CacheTensor, KVCacheSpec, KVGroup

from .row_kernels import VEC, vector_exp
from .spec import DecoderSpec

CHUNK = VEC  # positions per online-softmax step in attention (one vector of scores)
# Below these sizes the kernels run on the calling thread: starting the pool's second thread
# cost about 5 us here, more than a decode step's cache append or short-context attention.
# A visit costs 3.5-5 ns on one thread; with two threads, 1024 and 4096 visits gave the same
# verify(5) on the trained target.
SERIAL_TASKS = 16  # (token, kv head) pairs appended
SERIAL_VISITS = 1024  # (query, head, cached position) triples attended

_STORAGE = {"f32": "float32", "f16": "float16", "int8": "int8", "int4": "uint8"}
_SCALES = {"f32": 0, "f16": 0, "int8": 1, "int4": 2}


@dataclasses.dataclass(frozen=True)
class KVLayout:
    spec: DecoderSpec
    dtype: str  # the storage format: one of contract.KV_DTYPES
    max_context: int  # positions a request may reach when not windowed
    sinks: int = 0
    window: int = 0  # 0: keep every position
    slack: int = 64

    @property
    def windowed(self) -> bool:
        return self.window > 0

    @property
    def ring(self) -> int:
        return self.window + self.slack

    @property
    def fixed_capacity(self) -> int | None:
        return self.sinks + self.ring if self.windowed else None

    @property
    def storage_dtype(self) -> str:
        return _STORAGE[self.dtype]

    @property
    def packed_dim(self) -> int:
        return self.spec.head_dim // 2 if self.dtype == "int4" else self.spec.head_dim

    @property
    def scale_count(self) -> int:
        return _SCALES[self.dtype]

    def tensor_shapes(self, capacity) -> list[tuple[tuple, str]]:
        """(data, scales); the float dtypes have no scales and get a one-element placeholder."""
        s = self.spec
        data = ((s.num_layers, 2, s.num_kv_heads, capacity, self.packed_dim), self.storage_dtype)
        if not self.scale_count:
            return [data, ((1, 1, 1, 1, 1), "float16")]
        return [data, ((s.num_layers, 2, s.num_kv_heads, capacity, self.scale_count), "float16")]

    def cache_spec(self) -> KVCacheSpec:
        """The runtime's view of this cache (the manifest's kv_cache entry): one group, every layer."""
        (data_shape, data_dtype), (scales_shape, scales_dtype) = self.tensor_shapes(CAPACITY)
        group = KVGroup(kind="windowed" if self.windowed else "dense", layers=tuple(range(self.spec.num_layers)),
                        tensors=(CacheTensor("cache_data", data_shape, data_dtype),
                                 CacheTensor("cache_scales", scales_shape, scales_dtype)),
                        sinks=self.sinks, window=self.window, max_append=self.slack if self.windowed else self.max_context,
                        fixed_capacity=self.fixed_capacity)
        return KVCacheSpec(dtype=self.dtype, max_context=self.max_context, groups=(group,))

    # -- kernels ---------------------------------------------------------------------------

    def append_kernel(self):
        """Rotate the new keys, quantize keys and values, store them at their slots. The keys
        and values are heads [heads, heads + kv_heads) and [heads + kv_heads, heads + 2 kv_heads)
        of the fused q/k/v projection's output [n, heads + 2 kv_heads, head_dim]."""
        s = self.spec
        layers, kv_heads, dim, half = s.num_layers, s.num_kv_heads, s.head_dim, s.head_dim // 2
        heads = s.num_heads
        key, value = heads, heads + kv_heads  # the first key head and value head in qkv
        storage, packed = self.storage_dtype, self.packed_dim
        slot_of = self._slot_of()
        store = _STORE_MACROS[self.dtype]
        scale_shape = self._scale_shape

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
                rope_table(rope, 0, pos, inv_freq, half)
                for h in T.serial(kv_heads):
                    for d in T.serial(half):
                        row[d] = qkv[t, key + h, d] * rope[0, 0, d] - qkv[t, key + h, d + half] * rope[0, 1, d]
                        row[d + half] = qkv[t, key + h, d + half] * rope[0, 0, d] + qkv[t, key + h, d] * rope[0, 1, d]
                    store(row, stat, data, scales, layer, 0, h, slot)
                    for d in T.serial(dim):
                        row[d] = qkv[t, value + h, d]
                    store(row, stat, data, scales, layer, 1, h, slot)

        @T.prim_func(private=True, s_tir=True)
        def kv_append(var_qkv: T.handle, inv_freq: T.Buffer((half,), "float32"),
                      var_data: T.handle, var_scales: T.handle, start: T.Buffer((1,), "int64"), layer: T.int64):
            T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
            n = T.int64()
            capacity = T.int64()
            qkv = T.match_buffer(var_qkv, (n, heads + 2 * kv_heads, dim), "float32")
            data = T.match_buffer(var_data, (layers, 2, kv_heads, capacity, packed), storage)
            sc = T.meta_var(scale_shape(capacity))
            scales = T.match_buffer(var_scales, sc, "float16")
            if n * kv_heads <= SERIAL_TASKS:  # a small call: waking the thread pool costs more
                for t in T.serial(n):
                    append_token(t, n, capacity, sc, qkv, inv_freq, data, scales, start, layer)
            else:
                for t in T.parallel(n):
                    append_token(t, n, capacity, sc, qkv, inv_freq, data, scales, start, layer)

        return kv_append

    def attention_kernel(self):
        """Causal attention of n new queries (un-rotated: heads [0, heads) of the fused q/k/v
        projection's output) over the cache, online softmax.

        One (query, head) pair per parallel task; grouped-query heads share their key/value
        head; dequantization happens inside the dot products and the value sum. Positions go
        in chunks of CHUNK: one vector exp for their weights and one rescale of the running
        sum per chunk (per position, two scalar exps cost more than the dot products).
        """
        s = self.spec
        layers, heads, kv_heads = s.num_layers, s.num_heads, s.num_kv_heads
        dim, half, group = s.head_dim, s.head_dim // 2, s.num_heads // s.num_kv_heads
        storage, packed = self.storage_dtype, self.packed_dim
        scale = 1.0 / math.sqrt(dim)
        windowed, sinks, window = self.windowed, self.sinks, self.window
        slot_of = self._slot_of()
        scale_shape = self._scale_shape
        score, accumulate = _SCORE_MACROS[self.dtype], _ACCUMULATE_MACROS[self.dtype]

        @T.macro
        def rotate_query(dest, t, h, q, rope, r):
            """Query (t, h) rotated by rope[r] (cos, sin) and scaled by 1 / sqrt(head_dim)."""
            for d in T.serial(half):
                dest[d] = (q[t, h, d] * rope[r, 0, d] - q[t, h, d + half] * rope[r, 1, d]) * T.float32(scale)
                dest[d + half] = (q[t, h, d + half] * rope[r, 0, d] + q[t, h, d] * rope[r, 1, d]) * T.float32(scale)

        @T.macro
        def attend(query, qsum, st, part, acc, chunk, data, scales, layer, kh, first, count):
            """Online softmax over positions first .. first + count - 1, CHUNK positions at a
            time: their scores, then one vector exp and one rescale of acc per chunk."""
            for c in T.serial((count + T.int64(CHUNK - 1)) // T.int64(CHUNK)):
                filled: T.let[T.int64] = T.min(T.int64(CHUNK), count - c * T.int64(CHUNK))
                for j in T.serial(filled):
                    score(query, qsum, st, part, data, scales, layer, kh, slot_of(first + c * T.int64(CHUNK) + j))
                    chunk[j] = st[2]
                for j in T.serial(filled, T.int64(CHUNK)):
                    chunk[j] = T.float32(-3.0e38)
                new_max: T.let[T.float32] = T.max(st[0], T.call_llvm_pure_intrin(
                    "float32", "llvm.vector.reduce.fmax", chunk[T.ramp(0, 1, CHUNK)]))
                alpha: T.let[T.float32] = T.exp(st[0] - new_max)
                chunk[T.ramp(0, 1, CHUNK)] = vector_exp(chunk[T.ramp(0, 1, CHUNK)] - T.Broadcast(new_max, CHUNK))
                for j in T.serial(filled, T.int64(CHUNK)):
                    chunk[j] = T.float32(0)
                st[1] = st[1] * alpha + T.call_llvm_pure_intrin(
                    "float32", "llvm.vector.reduce.fadd", T.float32(0), chunk[T.ramp(0, 1, CHUNK)])
                st[0] = new_max
                for d in T.vectorized(dim):
                    acc[d] = acc[d] * alpha
                for j in T.serial(filled):
                    accumulate(acc, chunk[j], data, scales, layer, kh, slot_of(first + c * T.int64(CHUNK) + j))

        @T.macro
        def attend_one(th, n, capacity, sc, q, rope, inv_freq, data, scales, start, layer, out):
            with T.sblock("attend"):
                T.reads(q[0:n, 0:heads, 0:dim], rope[0:n, 0:2, 0:half], inv_freq[0:half], start[0:1],
                        data[layer, 0:2, 0:kv_heads, 0:capacity, 0:packed],
                        scales[0:sc[0], 0:sc[1], 0:sc[2], 0:sc[3], 0:sc[4]])
                T.writes(out[0:n, 0:heads, 0:dim])
                query = T.sblock_alloc_buffer((dim,), "float32")
                acc = T.sblock_alloc_buffer((dim,), "float32")
                qsum = T.sblock_alloc_buffer((1,), "float32")
                st = T.sblock_alloc_buffer((3,), "float32")  # running max, denominator, score
                part = T.sblock_alloc_buffer((LANES,), "float32")
                chunk = T.sblock_alloc_buffer((CHUNK,), "float32")  # scores, then weights
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
                        rope_table(sink_rope, 0, qpos - oldest + T.int64(sinks), inv_freq, half)
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
            T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
            n = T.int64()
            capacity = T.int64()
            q = T.match_buffer(var_qkv, (n, heads + 2 * kv_heads, dim), "float32")  # only heads [0, heads) are read
            data = T.match_buffer(var_data, (layers, 2, kv_heads, capacity, packed), storage)
            sc = T.meta_var(scale_shape(capacity))
            scales = T.match_buffer(var_scales, sc, "float16")
            out = T.match_buffer(var_out, (n, heads, dim), "float32")
            rope = T.alloc_buffer((n, 2, half), "float32")  # each new position's cos and sin, for every head
            for t in T.serial(n):
                rope_table(rope, t, start[0] + t, inv_freq, half)
            if n * heads * (start[0] + n) <= SERIAL_VISITS:  # a small call: waking the thread pool costs more
                for th in T.serial(n * heads):
                    attend_one(th, n, capacity, sc, q, rope, inv_freq, data, scales, start, layer, out)
            else:
                for th in T.parallel(n * heads):
                    attend_one(th, n, capacity, sc, q, rope, inv_freq, data, scales, start, layer, out)

        return kv_attention

    def _scale_shape(self, capacity):
        return self.tensor_shapes(capacity)[1][0]

    def _slot_of(self):
        """Position -> cache slot (an expression builder for the kernels): the identity, or the
        sinks then a ring of `ring` slots."""
        if not self.windowed:
            return lambda pos: pos
        sinks, ring = self.sinks, self.ring
        return lambda pos: T.if_then_else(pos < T.int64(sinks), pos,
                                          T.int64(sinks) + T.floormod(pos - T.int64(sinks), T.int64(ring)))


@T.macro
def rope_table(rope, r, pos, inv_freq, half):
    """rope[r] = cos and sin of every rotated pair's angle at `pos`, computed once per position
    and read by all of its heads: each value is a scalar libm call."""
    for d in T.serial(half):
        angle: T.let[T.float32] = T.Cast("float32", pos) * inv_freq[d]
        rope[r, 0, d] = T.cos(angle)
        rope[r, 1, d] = T.sin(angle)


@T.macro
def _sum(query, qsum, dim):
    qsum[0] = T.float32(0)
    for d in T.serial(dim):
        qsum[0] = qsum[0] + query[d]


# -- per-kind store / score / accumulate (expanded into the kernels at parse time) ---------

@T.macro
def _store_float(row, stat, data, scales, layer, which, h, slot):
    for d in T.serial(row.shape[0]):
        data[layer, which, h, slot, d] = T.Cast(data.dtype, row[d])


@T.macro
def _store_int8(row, stat, data, scales, layer, which, h, slot):
    stat[0] = T.float32(0)
    for d in T.serial(row.shape[0]):
        stat[0] = T.max(stat[0], T.fabs(row[d]))
    scales[layer, which, h, slot, 0] = T.Cast("float16", T.max(stat[0] / T.float32(127), T.float32(1e-6)))
    stat[1] = T.Cast("float32", scales[layer, which, h, slot, 0])
    for d in T.serial(row.shape[0]):
        data[layer, which, h, slot, d] = T.Cast(
            "int8", T.max(T.min(T.floor(row[d] / stat[1] + T.float32(0.5)), T.float32(127)), T.float32(-127)))


@T.macro
def _store_int4(row, stat, data, scales, layer, which, h, slot):
    stat[0] = row[0]
    stat[1] = row[0]
    for d in T.serial(row.shape[0]):
        stat[0] = T.min(stat[0], row[d])
        stat[1] = T.max(stat[1], row[d])
    scales[layer, which, h, slot, 1] = T.Cast("float16", stat[0])
    stat[0] = T.Cast("float32", scales[layer, which, h, slot, 1])
    scales[layer, which, h, slot, 0] = T.Cast("float16", T.max((stat[1] - stat[0]) / T.float32(15), T.float32(1e-6)))
    stat[1] = T.Cast("float32", scales[layer, which, h, slot, 0])
    for j in T.serial(row.shape[0] // 2):
        data[layer, which, h, slot, j] = T.Cast("uint8", T.max(T.min(
            T.floor((row[2 * j] - stat[0]) / stat[1] + T.float32(0.5)), T.float32(15)), T.float32(0))) | (
            T.Cast("uint8", T.max(T.min(
                T.floor((row[2 * j + 1] - stat[0]) / stat[1] + T.float32(0.5)), T.float32(15)), T.float32(0)))
            << T.uint8(4))


# Dot products keep LANES partial sums in one vector register (a serial sum into one scalar
# would not vectorize without reassociation); head_dim must be a multiple of 2 * LANES.
LANES = 8


@T.macro
def _reduce_partials(part, st):
    st[2] = T.float32(0)
    for lane in T.serial(LANES):
        st[2] = st[2] + part[lane]


@T.macro
def _score_float(query, qsum, st, part, data, scales, layer, kh, slot):
    for lane in T.vectorized(LANES):
        part[lane] = T.float32(0)
    for c in T.serial(query.shape[0] // LANES):
        for lane in T.vectorized(LANES):
            part[lane] = part[lane] + query[c * LANES + lane] * T.Cast(
                "float32", data[layer, 0, kh, slot, c * LANES + lane])
    _reduce_partials(part, st)


@T.macro
def _score_int8(query, qsum, st, part, data, scales, layer, kh, slot):
    _score_float(query, qsum, st, part, data, scales, layer, kh, slot)
    st[2] = st[2] * T.Cast("float32", scales[layer, 0, kh, slot, 0])


@T.macro
def _score_int4(query, qsum, st, part, data, scales, layer, kh, slot):
    for lane in T.vectorized(LANES):
        part[lane] = T.float32(0)
    for c in T.serial(query.shape[0] // (2 * LANES)):
        for lane in T.vectorized(LANES):
            part[lane] = part[lane] \
                + query[2 * (c * LANES + lane)] * T.Cast("float32", data[layer, 0, kh, slot, c * LANES + lane] & T.uint8(15)) \
                + query[2 * (c * LANES + lane) + 1] * T.Cast("float32", data[layer, 0, kh, slot, c * LANES + lane] >> T.uint8(4))
    _reduce_partials(part, st)
    st[2] = st[2] * T.Cast("float32", scales[layer, 0, kh, slot, 0]) \
        + qsum[0] * T.Cast("float32", scales[layer, 0, kh, slot, 1])


@T.macro
def _accumulate_float(acc, p, data, scales, layer, kh, slot):
    for d in T.vectorized(acc.shape[0]):
        acc[d] = acc[d] + p * T.Cast("float32", data[layer, 1, kh, slot, d])


@T.macro
def _accumulate_int8(acc, p, data, scales, layer, kh, slot):
    for d in T.vectorized(acc.shape[0]):
        acc[d] = acc[d] + p * T.Cast("float32", scales[layer, 1, kh, slot, 0]) * T.Cast(
            "float32", data[layer, 1, kh, slot, d])


@T.macro
def _accumulate_int4(acc, p, data, scales, layer, kh, slot):
    for j in T.vectorized(acc.shape[0] // 2):
        acc[2 * j] = acc[2 * j] + p * (
            T.Cast("float32", data[layer, 1, kh, slot, j] & T.uint8(15)) * T.Cast("float32", scales[layer, 1, kh, slot, 0])
            + T.Cast("float32", scales[layer, 1, kh, slot, 1]))
        acc[2 * j + 1] = acc[2 * j + 1] + p * (
            T.Cast("float32", data[layer, 1, kh, slot, j] >> T.uint8(4)) * T.Cast("float32", scales[layer, 1, kh, slot, 0])
            + T.Cast("float32", scales[layer, 1, kh, slot, 1]))


_STORE_MACROS = {"f32": _store_float, "f16": _store_float, "int8": _store_int8, "int4": _store_int4}
_SCORE_MACROS = {"f32": _score_float, "f16": _score_float, "int8": _score_int8, "int4": _score_int4}
_ACCUMULATE_MACROS = {"f32": _accumulate_float, "f16": _accumulate_float, "int8": _accumulate_int8,
                      "int4": _accumulate_int4}
