"""Per KV-cache dtype: how a row is stored, how a query scores against a cached key and how a
weighted cached value is accumulated (TIR macros, expanded into kernels/attention.py's kernels).

  f32 / f16  plain values
  int8       symmetric, one f16 scale per token and head
  int4       asymmetric, one f16 scale and f16 minimum per token and head, two values per
             byte (low nibble first)
"""

from __future__ import annotations

from tvm.script import tirx as T

# Partial sums of a score's dot product: one vector register (a serial sum into one scalar
# would not vectorize without reassociation); head_dim must be a multiple of 2 * DOT_LANES.
DOT_LANES = 8


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


@T.macro
def _reduce_partials(part, st):
    st[2] = T.float32(0)
    for lane in T.serial(DOT_LANES):
        st[2] = st[2] + part[lane]


@T.macro
def _score_float(query, qsum, st, part, data, scales, layer, kh, slot):
    for lane in T.vectorized(DOT_LANES):
        part[lane] = T.float32(0)
    for c in T.serial(query.shape[0] // DOT_LANES):
        for lane in T.vectorized(DOT_LANES):
            part[lane] = part[lane] + query[c * DOT_LANES + lane] * T.Cast(
                "float32", data[layer, 0, kh, slot, c * DOT_LANES + lane])
    _reduce_partials(part, st)


@T.macro
def _score_int8(query, qsum, st, part, data, scales, layer, kh, slot):
    _score_float(query, qsum, st, part, data, scales, layer, kh, slot)
    st[2] = st[2] * T.Cast("float32", scales[layer, 0, kh, slot, 0])


@T.macro
def _score_int4(query, qsum, st, part, data, scales, layer, kh, slot):
    for lane in T.vectorized(DOT_LANES):
        part[lane] = T.float32(0)
    for c in T.serial(query.shape[0] // (2 * DOT_LANES)):
        for lane in T.vectorized(DOT_LANES):
            part[lane] = part[lane] \
                + query[2 * (c * DOT_LANES + lane)] * T.Cast("float32", data[layer, 0, kh, slot, c * DOT_LANES + lane] & T.uint8(15)) \
                + query[2 * (c * DOT_LANES + lane) + 1] * T.Cast("float32", data[layer, 0, kh, slot, c * DOT_LANES + lane] >> T.uint8(4))
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


STORE = {"f32": _store_float, "f16": _store_float, "int8": _store_int8, "int4": _store_int4}
SCORE = {"f32": _score_float, "f16": _score_float, "int8": _score_int8, "int4": _score_int4}
ACCUMULATE = {"f32": _accumulate_float, "f16": _accumulate_float, "int8": _accumulate_int8,
                      "int4": _accumulate_int4}
