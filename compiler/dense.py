"""Dense (f32 / f16) weights for CPU matmuls: tile packing (numpy) and the kernel (TIR).

    y[m, n] = sum_k x[m, k] * W[n, k]        x: [m, K] f32 (m dynamic), W: [N, K] (nn.Linear), y: [m, N] f32

Packed layout: output rows in tiles of TILE = 16 (as quant.py; the last tile padded with
zeros), each tile stored k-major: tiles [T * K, 16], where row t * K + k holds
W[16t .. 16t + 15, k]. One 16-lane load is one k for 16 outputs, so the kernel needs no
horizontal sums: per k it multiplies that vector by each activation row's x[r, k]
(broadcast) into the row's accumulators. Rows go in groups that fit the register file, and
each weight vector is loaded once per group, so a verify pass of a few rows reads the
weights once, like a decode step. Prefill-sized calls take two tiles per group: per k two
weight loads serve twice the multiply-adds (f16 at 128 rows: 400-460 -> 460-490 GFLOP/s).

Every row is computed by the same instructions in the same order whatever the group size
(two accumulators per row, even and odd k, summed at the end), so one row alone and the same
row among others give identical bits: decode and verify agree exactly.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width

from .quant import TILE, _tiles, prefetch

DTYPES = {"f32": "float32", "f16": "float16"}
_ITEMSIZE = {"float32": 4, "float16": 2}
# Weights up to this size are multiplied on the calling thread alone (in calls of up to
# SERIAL_ROWS rows). With two real threads (see runtime/bundle.configure_threads; the earlier
# measurements here had run on one) the trained target's decode took 0.74-0.84 ms at 512 KB
# against 0.90-0.98 ms at 4 MB, verify(5) 0.87 against 1.10-1.14 ms.
SERIAL_BYTES = 512 << 10
# ... in calls of up to this many rows (decode, verify). A prefill chunk is compute-bound:
# 1152 x 896 at 128 rows ran at 230-260 GFLOP/s on one thread (f16), 420 split over two (f32).
SERIAL_ROWS = 8
# How far ahead the weight stream is hinted (quant.prefetch). 8 KB against 2 KB: the trained
# target's verify(5) 1.52-1.55 -> 1.12-1.19 ms, decode 1.01-1.05 -> 0.90-0.98 ms; Qwen2.5-0.5B
# f16 verify(5) 48.2-48.6 -> 29.1-29.6 ms, decode 27.6-28.0 -> 26.9-27.1 ms. 16 and 32 KB were
# no better. (Measured with the runtime on one thread.)
PREFETCH_BYTES = 8192


def pack(weight: np.ndarray, dtype: str) -> np.ndarray:
    """An nn.Linear weight [N, K] -> the kernel's tiles [T * K, 16] in `dtype`."""
    weight = np.asarray(weight)
    n, k = weight.shape
    tiles = _tiles(n)
    padded = np.zeros((tiles * TILE, k), np.float32)
    padded[:n] = weight
    return np.ascontiguousarray(padded.reshape(tiles, TILE, k).transpose(0, 2, 1).reshape(tiles * k, TILE).astype(dtype))


def unpack(tiles: np.ndarray, n: int, k: int) -> np.ndarray:
    """The [N, K] weight back from its tiles."""
    t = _tiles(n)
    return tiles.reshape(t, k, TILE).transpose(0, 2, 1).reshape(t * TILE, k)[:n]


def packed_shape(n: int, k: int) -> tuple[int, int]:
    return _tiles(n) * k, TILE


def _rows_per_group(target: Target) -> int:
    """Activation rows per pass over a tile: 2 x rows accumulators of 16 lanes plus the weight
    vector must stay in registers (32 zmm on AVX-512, 16 ymm on AVX2, 32 q on NEON)."""
    bits = llvm_get_vector_width(target)
    return {512: 8, 256: 3}.get(bits, 3)


def _pair_rows(target: Target) -> int:
    """Activation rows per pass over two tiles at once (prefill): 2 x 2 x rows accumulators,
    two weight vectors and a broadcast in the register file. Per k two weight loads then
    serve 2 x rows multiply-adds instead of one serving rows (AVX-512: 12 against 8); other
    vector widths keep one tile per pass (0)."""
    return 6 if llvm_get_vector_width(target) == 512 else 0


def matmul_kernel(n: int, k: int, dtype: str, target: Target):
    """(x [m, K] f32, tiles [T * K, 16] dtype, y [m, N] f32)."""
    tiles, full_tiles = _tiles(n), n // TILE
    rows, pair_rows = _rows_per_group(target), _pair_rows(target)
    accumulators = max(rows, 2 * pair_rows)
    tasks = max(1, min(tiles, int(target.attrs.get("num-cores", 1))))
    weight_bytes = tiles * k * TILE * _ITEMSIZE[dtype]
    half, k_is_odd = k // 2, k % 2 == 1
    itemsize = _ITEMSIZE[dtype]
    ahead = PREFETCH_BYTES // (TILE * itemsize)  # rows
    lanes = T.ramp(0, 1, TILE)

    def term(x, row, kk, wv, j):
        return T.Broadcast(x[row, kk], TILE) * wv[j, lanes]

    @T.macro
    def row_group(count, pair, row0, t, x, w, y, even, odd, wv, tail):
        """Rows row0 .. row0 + count - 1 against tiles t .. t + pair - 1 (pair: 1 or 2)."""
        for j in T.unroll(pair):
            for r in T.unroll(count):
                even[j * count + r, lanes] = T.Broadcast(T.float32(0), TILE)
                odd[j * count + r, lanes] = T.Broadcast(T.float32(0), TILE)
        for i in T.serial(half):
            for j in T.unroll(pair):
                prefetch(w, (t + j) * k + 2 * i + ahead)  # one hint per 64-byte line: two rows of f32, one pair of f16
                if itemsize == 4:
                    prefetch(w, (t + j) * k + 2 * i + 1 + ahead)
            for j in T.unroll(pair):
                wv[j, lanes] = T.Cast("float32x16", w[(t + j) * k + 2 * i, lanes])
            for r in T.unroll(count):
                for j in T.unroll(pair):
                    even[j * count + r, lanes] = even[j * count + r, lanes] + term(x, row0 + r, 2 * i, wv, j)
            for j in T.unroll(pair):
                wv[j, lanes] = T.Cast("float32x16", w[(t + j) * k + 2 * i + 1, lanes])
            for r in T.unroll(count):
                for j in T.unroll(pair):
                    odd[j * count + r, lanes] = odd[j * count + r, lanes] + term(x, row0 + r, 2 * i + 1, wv, j)
        if k_is_odd:
            for j in T.unroll(pair):
                wv[j, lanes] = T.Cast("float32x16", w[(t + j) * k + k - 1, lanes])
                for r in T.unroll(count):
                    even[j * count + r, lanes] = even[j * count + r, lanes] + term(x, row0 + r, k - 1, wv, j)
        for j in T.unroll(pair):
            for r in T.unroll(count):
                if t + j < full_tiles:
                    y[row0 + r, T.ramp((t + j) * TILE, 1, TILE)] = even[j * count + r, lanes] + odd[j * count + r, lanes]
                else:
                    # Through a buffer of its own: the sums see only whole-vector accesses.
                    tail[lanes] = even[j * count + r, lanes] + odd[j * count + r, lanes]
                    for lane in T.serial(n - full_tiles * TILE):  # the padded rows are dropped
                        y[row0 + r, (t + j) * TILE + lane] = tail[lane]

    @T.macro
    def tile_rows(t, first_row, m, x, w, y, even, odd, wv, tail):
        """Rows first_row .. m - 1 against tile t: groups of `rows`, then the rest as one group."""
        for g in T.serial((m - first_row) // rows):
            row_group(rows, 1, first_row + g * rows, t, x, w, y, even, odd, wv, tail)
        # The static ifs keep the group sizes below `rows`.
        if rows > 1:
            if (m - first_row) % rows == 1:
                row_group(1, 1, m - 1, t, x, w, y, even, odd, wv, tail)
        if rows > 2:
            if (m - first_row) % rows == 2:
                row_group(2, 1, m - 2, t, x, w, y, even, odd, wv, tail)
        if rows > 3:
            if (m - first_row) % rows == 3:
                row_group(3, 1, m - 3, t, x, w, y, even, odd, wv, tail)
        if rows > 4:
            if (m - first_row) % rows == 4:
                row_group(4, 1, m - 4, t, x, w, y, even, odd, wv, tail)
        if rows > 5:
            if (m - first_row) % rows == 5:
                row_group(5, 1, m - 5, t, x, w, y, even, odd, wv, tail)
        if rows > 6:
            if (m - first_row) % rows == 6:
                row_group(6, 1, m - 6, t, x, w, y, even, odd, wv, tail)
        if rows > 7:
            if (m - first_row) % rows == 7:
                row_group(7, 1, m - 7, t, x, w, y, even, odd, wv, tail)

    @T.macro
    def work(task, ntasks, m, x, w, y):
        with T.sblock("task"):
            T.reads(x[0:m, 0:k], w[0:tiles * k, 0:TILE])
            T.writes(y[0:m, 0:n])
            # Small local buffers accessed with constant indices: LLVM keeps them in registers.
            # Two buffers: TVM gives a local buffer of 1 KB or more heap memory, not registers.
            even = T.sblock_alloc_buffer((accumulators, TILE), "float32")
            odd = T.sblock_alloc_buffer((accumulators, TILE), "float32")
            wv = T.sblock_alloc_buffer((2, TILE), "float32")
            tail = T.sblock_alloc_buffer((TILE,), "float32")
            first = task * tiles // ntasks
            last = (task + 1) * tiles // ntasks
            if pair_rows > 0:
                # Prefill-sized calls (more than SERIAL_ROWS rows) go through tiles two at a time,
                # pair_rows rows per group; their remaining rows, and an odd tile, one tile at a
                # time. (A verify pass of 6 rows in pairs made speculation at k = 5 16% slower.)
                pairs = T.if_then_else(m > SERIAL_ROWS, T.Cast("int64", (last - first) // 2), T.int64(0))
                for p in T.serial(pairs):
                    for g in T.serial(m // pair_rows):
                        row_group(pair_rows, 2, g * pair_rows, first + 2 * p, x, w, y, even, odd, wv, tail)
                    for j in T.serial(2):
                        tile_rows(first + 2 * p + j, m // pair_rows * pair_rows, m, x, w, y, even, odd, wv, tail)
                for t in T.serial(first + 2 * pairs, last):
                    tile_rows(t, T.int64(0), m, x, w, y, even, odd, wv, tail)
            else:
                for t in T.serial(first, last):
                    tile_rows(t, T.int64(0), m, x, w, y, even, odd, wv, tail)

    @T.prim_func(private=True, s_tir=True)
    def matmul(var_x: T.handle, w: T.Buffer((tiles * k, TILE), dtype), var_y: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        y = T.match_buffer(var_y, (m, n), "float32")
        if m <= SERIAL_ROWS and weight_bytes <= SERIAL_BYTES:
            for task in T.serial(1):  # a small weight: waking the other threads costs more
                work(task, 1, m, x, w, y)
        else:
            for task in T.parallel(tasks):
                work(task, tasks, m, x, w, y)

    return matmul
