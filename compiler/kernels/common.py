"""Pieces every kernel family shares: tiles, vectors, prefetch hints and the two loop shapes."""

from __future__ import annotations

from tvm.script import tirx as T

HAND_WRITTEN = {"op_pattern": 8, "tirx.is_scheduled": True}  # PrimFunc attrs: never fused or rescheduled
TILE = 16  # output rows per weight tile: one f32 / int32 lane of a 512-bit register each
VEC = 16  # lanes per row-kernel vector expression; LLVM splits them for narrower ISAs
MAX_GROUP_ROWS = 8  # most activation rows a matmul keeps in registers at once (AVX-512)
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def tile_count(rows: int) -> int:
    """Tiles of TILE rows covering `rows` (the last one padded)."""
    return -(-rows // TILE)


def prefetch(buffer, row, column=0):
    """Hint the cache line holding buffer[row, column] (read, keep in all levels); a hint past
    the end of the buffer is harmless. With several activation rows per weight load the
    hardware prefetcher alone left DRAM idle between bursts."""
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(buffer[row, column]),
                                         T.int32(0), T.int32(3), T.int32(1)))


def splat(value: float):
    return T.Broadcast(T.float32(value), VEC)


def vector_exp(x):
    """exp of a float32xVEC expression: 2^round(t) times a degree-6 polynomial of 2^f on
    |f| <= 1/2 (relative error about 2e-7), t = x log2(e) clamped to the normal range
    (TVM's exp is a libm call per lane)."""
    t = T.max(T.min(x * splat(LOG2E), splat(126.0)), splat(-126.0))
    whole = T.floor(t + splat(0.5))
    f = (t - whole) * splat(LN2)
    poly = splat(1.0 / 720)
    for c in (1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0):
        poly = poly * f + splat(c)
    power = T.reinterpret(f"float32x{VEC}", T.shift_left(T.Cast(f"int32x{VEC}", whole)
                                                        + T.Broadcast(T.int32(127), VEC),
                                                        T.Broadcast(T.int32(23), VEC)))
    return poly * power


@T.macro
def serial_or_parallel(serial, serial_extent, parallel_extent, body, args):
    """body(i, extent, *args) for i below the extent: on the calling thread while `serial` holds
    (a small call: waking the thread pool costs more than the work), else across the pool."""
    if serial:
        for i in T.serial(serial_extent):
            body(i, serial_extent, *args)
    else:
        for i in T.parallel(parallel_extent):
            body(i, parallel_extent, *args)


def _remainder_dispatch(count: int):
    later = _remainder_dispatch(count + 1) if count + 1 < MAX_GROUP_ROWS else None

    @T.macro
    def dispatch(rows, left, end, group, args):
        if count < rows:  # static: only group sizes below `rows` exist
            if left % rows == count:
                group(count, end - count, *args)
            if later is not None:
                later(rows, left, end, group, args)

    return dispatch


# The last `left % rows` rows before `end` as one group: group(count, first_row, *args), one
# branch per possible count (decode: 1 row; a verify pass: often all of them).
remainder_rows = _remainder_dispatch(1)
