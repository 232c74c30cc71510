"""The f32 / f16 matmul (TIR): y[m, n] = sum_k x[m, k] * W[n, k], x f32 [m, K] (m dynamic),
W in tiles [T * K, 16] (packing.pack_dense), y f32 [m, N].

One 16-lane load is one k for 16 outputs, so the kernel needs no horizontal sums: per k it
multiplies that vector by each activation row's x[r, k] (broadcast) into the row's
accumulators. Rows go in groups that fit the register file and each weight vector is loaded
once per group, so a verify pass of a few rows reads the weights once, like a decode step.
Prefill-sized calls take two tiles per group (two weight loads serve twice the multiply-adds).

Every row is computed by the same instructions in the same order whatever the group size
(two accumulators per row, even and odd k, summed at the end), so one row alone and the same
row among others give identical bits: decode and verify agree exactly.
"""

from __future__ import annotations

from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width

from .cache import cached_kernel
from .common import HAND_WRITTEN, TILE, prefetch, remainder_rows, serial_or_parallel, tile_count

_ITEMSIZE = {"float32": 4, "float16": 2}
# Weight bytes up to which calls of up to SERIAL_ROWS rows run on the calling thread
# (benchmarks/formats.py on the trained target re-measures it).
SERIAL_WEIGHT_BYTES = 512 << 10
SERIAL_ROWS = 8  # decode and verify; a prefill chunk is compute-bound and splits
PREFETCH_BYTES = 8192  # how far ahead the weight stream is hinted (benchmarks/formats.py, f16)


def _rows_per_group(target: Target) -> int:
    """Activation rows per pass over a tile: 2 x rows accumulators of 16 lanes plus the weight
    vector must stay in registers (32 zmm on AVX-512, 16 ymm on AVX2, 32 q on NEON)."""
    return {512: 8, 256: 3}.get(llvm_get_vector_width(target), 3)


def _pair_rows(target: Target) -> int:
    """Activation rows per pass over two tiles at once (prefill): 2 x 2 x rows accumulators,
    two weight vectors and a broadcast in the register file (AVX-512 only; else 0)."""
    return 6 if llvm_get_vector_width(target) == 512 else 0


@cached_kernel
def matmul_kernel(n: int, k: int, dtype: str, target: Target):
    """(x [m, K] f32, tiles [T * K, 16] dtype, y [m, N] f32)."""
    tiles, full_tiles = tile_count(n), n // TILE
    rows, pair_rows = _rows_per_group(target), _pair_rows(target)
    accumulators = max(rows, 2 * pair_rows)
    tasks = max(1, min(tiles, int(target.attrs.get("num-cores", 1))))
    itemsize = _ITEMSIZE[dtype]
    weight_bytes = tiles * k * TILE * itemsize
    half, k_is_odd = k // 2, k % 2 == 1
    ahead = PREFETCH_BYTES // (TILE * itemsize)  # rows
    lanes = T.ramp(0, 1, TILE)

    def term(x, row, kk, wv, j):
        return T.Broadcast(x[row, kk], TILE) * wv[j, lanes]

    @T.macro
    def row_group(count, row0, pair, t, x, w, y, even, odd, wv, tail):
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
            row_group(rows, first_row + g * rows, 1, t, x, w, y, even, odd, wv, tail)
        remainder_rows(rows, m - first_row, m, row_group, (1, t, x, w, y, even, odd, wv, tail))

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
                # time (pairs for a verify pass made speculation slower).
                pairs = T.if_then_else(m > SERIAL_ROWS, T.Cast("int64", (last - first) // 2), T.int64(0))
                for p in T.serial(pairs):
                    for g in T.serial(m // pair_rows):
                        row_group(pair_rows, g * pair_rows, 2, first + 2 * p, x, w, y, even, odd, wv, tail)
                    for j in T.serial(2):
                        tile_rows(first + 2 * p + j, m // pair_rows * pair_rows, m, x, w, y, even, odd, wv, tail)
                for t in T.serial(first + 2 * pairs, last):
                    tile_rows(t, T.int64(0), m, x, w, y, even, odd, wv, tail)
            else:
                for t in T.serial(first, last):
                    tile_rows(t, T.int64(0), m, x, w, y, even, odd, wv, tail)

    @T.prim_func(private=True, s_tir=True)
    def matmul(var_x: T.handle, w: T.Buffer((tiles * k, TILE), dtype), var_y: T.handle):
        T.func_attr(HAND_WRITTEN)
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        y = T.match_buffer(var_y, (m, n), "float32")
        serial_or_parallel(m <= SERIAL_ROWS and weight_bytes <= SERIAL_WEIGHT_BYTES, 1, tasks,
                           work, (m, x, w, y))

    return matmul
