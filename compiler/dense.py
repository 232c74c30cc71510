"""Dense (f32 / f16) weights for CPU matmuls: tile packing (numpy) and the kernel (TIR).

    y[m, n] = sum_k x[m, k] * W[n, k]        x: [m, K] f32 (m dynamic), W: [N, K] (nn.Linear), y: [m, N] f32

Packed layout: output rows in tiles of TILE = 16 (as quant.py; the last tile padded with
zeros), each tile stored k-major: tiles [T * K, 16], where row t * K + k holds
W[16t .. 16t + 15, k]. One 16-lane load is one k for 16 outputs, so the kernel needs no
horizontal sums: per k it multiplies that vector by each activation row's x[r, k]
(broadcast) into the row's accumulators. Rows go in groups that fit the register file, and
each weight vector is loaded once per group, so a verify pass of a few rows reads the
weights once, like a decode step.

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
# Weights up to this size are multiplied on the calling thread alone. Measured on the trained
# target (f32, 6 layers; 3.1 MB fused gate/up, 1.6 MB down, 1 MB q/k/v): decode 1.03-1.05 ms
# with all three on one thread, 1.07-1.10 ms with gate/up on two, 1.19-1.22 ms with everything
# on two (the pool's start and barrier cost more than the second core gains; spinning the pool
# longer does not help); on the 0.5B shape in f16 (1.6 MB q/o) no difference beyond noise.
SERIAL_BYTES = 4 << 20
# How far ahead the weight stream is hinted (quant.prefetch). 8 KB against 2 KB: the trained
# target's verify(5) 1.52-1.55 -> 1.12-1.19 ms, decode 1.01-1.05 -> 0.90-0.98 ms; Qwen2.5-0.5B
# f16 verify(5) 48.2-48.6 -> 29.1-29.6 ms, decode 27.6-28.0 -> 26.9-27.1 ms. 16 and 32 KB were
# no better.
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


def matmul_kernel(n: int, k: int, dtype: str, target: Target):
    """(x [m, K] f32, tiles [T * K, 16] dtype, y [m, N] f32)."""
    tiles, full_tiles = _tiles(n), n // TILE
    rows = _rows_per_group(target)
    tasks = max(1, min(tiles, int(target.attrs.get("num-cores", 1))))
    weight_bytes = tiles * k * TILE * _ITEMSIZE[dtype]
    half, k_is_odd = k // 2, k % 2 == 1
    itemsize = _ITEMSIZE[dtype]
    ahead = PREFETCH_BYTES // (TILE * itemsize)  # rows
    lanes = T.ramp(0, 1, TILE)

    def term(x, row, kk, wv):
        return T.Broadcast(x[row, kk], TILE) * wv[lanes]

    @T.macro
    def row_group(count, row0, t, x, w, y, even, odd, wv, tail):
        for r in T.unroll(count):
            even[r, lanes] = T.Broadcast(T.float32(0), TILE)
            odd[r, lanes] = T.Broadcast(T.float32(0), TILE)
        for i in T.serial(half):
            prefetch(w, t * k + 2 * i + ahead)  # one hint per 64-byte line: two rows of f32, one pair of f16
            if itemsize == 4:
                prefetch(w, t * k + 2 * i + 1 + ahead)
            wv[lanes] = T.Cast("float32x16", w[t * k + 2 * i, lanes])
            for r in T.unroll(count):
                even[r, lanes] = even[r, lanes] + term(x, row0 + r, 2 * i, wv)
            wv[lanes] = T.Cast("float32x16", w[t * k + 2 * i + 1, lanes])
            for r in T.unroll(count):
                odd[r, lanes] = odd[r, lanes] + term(x, row0 + r, 2 * i + 1, wv)
        if k_is_odd:
            wv[lanes] = T.Cast("float32x16", w[t * k + k - 1, lanes])
            for r in T.unroll(count):
                even[r, lanes] = even[r, lanes] + term(x, row0 + r, k - 1, wv)
        for r in T.unroll(count):
            if t < full_tiles:
                y[row0 + r, T.ramp(t * TILE, 1, TILE)] = even[r, lanes] + odd[r, lanes]
            else:
                # Through a buffer of its own: the sums see only whole-vector accesses.
                tail[lanes] = even[r, lanes] + odd[r, lanes]
                for lane in T.serial(n - full_tiles * TILE):  # the padded rows are dropped
                    y[row0 + r, t * TILE + lane] = tail[lane]

    @T.macro
    def work(task, ntasks, m, x, w, y):
        with T.sblock("task"):
            T.reads(x[0:m, 0:k], w[0:tiles * k, 0:TILE])
            T.writes(y[0:m, 0:n])
            # Small local buffers accessed with constant indices: LLVM keeps them in registers.
            # Two buffers: TVM gives a local buffer of 1 KB or more heap memory, not registers.
            even = T.sblock_alloc_buffer((rows, TILE), "float32")
            odd = T.sblock_alloc_buffer((rows, TILE), "float32")
            wv = T.sblock_alloc_buffer((TILE,), "float32")
            tail = T.sblock_alloc_buffer((TILE,), "float32")
            for t in T.serial(task * tiles // ntasks, (task + 1) * tiles // ntasks):
                for g in T.serial(m // rows):
                    row_group(rows, g * rows, t, x, w, y, even, odd, wv, tail)
                # The remaining m % rows rows as one group (the static ifs keep sizes below `rows`).
                if rows > 1:
                    if m % rows == 1:
                        row_group(1, m - 1, t, x, w, y, even, odd, wv, tail)
                if rows > 2:
                    if m % rows == 2:
                        row_group(2, m - 2, t, x, w, y, even, odd, wv, tail)
                if rows > 3:
                    if m % rows == 3:
                        row_group(3, m - 3, t, x, w, y, even, odd, wv, tail)
                if rows > 4:
                    if m % rows == 4:
                        row_group(4, m - 4, t, x, w, y, even, odd, wv, tail)
                if rows > 5:
                    if m % rows == 5:
                        row_group(5, m - 5, t, x, w, y, even, odd, wv, tail)
                if rows > 6:
                    if m % rows == 6:
                        row_group(6, m - 6, t, x, w, y, even, odd, wv, tail)
                if rows > 7:
                    if m % rows == 7:
                        row_group(7, m - 7, t, x, w, y, even, odd, wv, tail)

    @T.prim_func(private=True, s_tir=True)
    def matmul(var_x: T.handle, w: T.Buffer((tiles * k, TILE), dtype), var_y: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        y = T.match_buffer(var_y, (m, n), "float32")
        if weight_bytes + m * k * 4 <= SERIAL_BYTES:
            for task in T.serial(1):  # a small weight: waking the other threads costs more
                work(task, 1, m, x, w, y)
        else:
            for task in T.parallel(tasks):
                work(task, tasks, m, x, w, y)

    return matmul
