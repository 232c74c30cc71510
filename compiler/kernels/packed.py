"""The q8 / q4 matmul and the activation quantizer (TIR).

    y[m, n] = sum_k x[m, k] * W[n, k]      x: [m, K] f32 (m dynamic), W packed (layout.py), y: [m, N] f32

Activations are quantized per row and 32-block to int8 (symmetric, f32 scale), so the block
dot products are exact int32 sums of byte products (isa.py), then one convert and two FMAs per
block. A weight zero point (the minimum for q4; 128 for q8 on paths taking unsigned weights) is
corrected with the activation block sum. Call order:
  1. quantize_rows(x [m, K] f32) -> xq [m, K/4] int32   (4 int8 values per word, little endian)
                                    xd [m, K/32] f32    (activation scale per block)
                                    xs [m, K/32] f32    (xd * sum of the block's int8 values)
  2. matmul(xq, xd, xs, qs, scales) -> y [m, N] f32
One quantize_rows result can feed every matmul that reads the same x (q/k/v, gate/up).
"""

from __future__ import annotations

from tvm.script import tirx as T
from tvm.target import Target

from .cache import cached_kernel
from .common import HAND_WRITTEN, TILE, prefetch, remainder_rows, serial_or_parallel
from .isa import DOT_PATHS, dot_path
from .layout import BLOCK, K_CHUNK, OPERAND_BYTES, SCHEMES, PackedLayout

SERIAL_QUANTIZE = 65536  # m * K below which activation rows are quantized on the calling thread
# Work up to which the matmul runs on the calling thread: weight bytes plus ROW_COST per block
# and activation row (benchmarks/quant_kernels.py and formats.py re-measure it).
SERIAL_WORK_BYTES = 256 << 10
ROW_COST = 64  # bytes one core streams in the time it computes one block of one row
# How far ahead the packed weights are hinted: verify/prefill row groups, and q4 decode too
# (q8 decode runs faster without the hints; benchmarks/formats.py re-measures both).
PREFETCH_BYTES = 8192


def match_quantized_rows(rows, k: int, var_xq, var_xd, var_xs):
    """Inside a PrimFunc: the buffers (xq, xd, xs) of `rows` activation rows of width k."""
    return (T.match_buffer(var_xq, (rows, k // 4), "int32"), T.match_buffer(var_xd, (rows, k // BLOCK), "float32"),
            T.match_buffer(var_xs, (rows, k // BLOCK), "float32"))


@T.macro
def quantize_block(src, src_row, xq, xd, xs, q, row, b):
    """Block b of src[src_row] -> row `row` of (xq, xd, xs); q: a local int32 [BLOCK] buffer.
    Shared with the fused row kernels (norms.py), so every path quantizes alike."""
    # 32 lanes at once: LLVM splits them into the target's vectors.
    amax: T.let[T.float32] = T.call_llvm_pure_intrin(
        "float32", "llvm.vector.reduce.fmax", T.fabs(src[src_row, T.ramp(b * BLOCK, 1, BLOCK)]))
    inv: T.let[T.float32] = T.if_then_else(amax > T.float32(0), T.float32(127) / amax, T.float32(0))
    q[T.ramp(0, 1, BLOCK)] = T.Cast("int32x32", T.nearbyint(src[src_row, T.ramp(b * BLOCK, 1, BLOCK)]
                                                             * T.Broadcast(inv, BLOCK)))
    xd[row, b] = amax / T.float32(127)
    xs[row, b] = xd[row, b] * T.Cast("float32", T.call_llvm_pure_intrin(
        "int32", "llvm.vector.reduce.add", q[T.ramp(0, 1, BLOCK)]))
    xq[row, T.ramp(b * 8, 1, 8)] = T.reinterpret("int32x8", T.Cast("int8x32", q[T.ramp(0, 1, BLOCK)]))


@cached_kernel
def quantize_kernel(k: int):
    """(x [m, K] f32, xq [m, K/4] i32, xd [m, K/32] f32, xs [m, K/32] f32): one row at a time."""
    blocks = PackedLayout(SCHEMES[0], 1, k).blocks

    @T.macro
    def quantize_row(row, _rows, x, xq, xd, xs):
        with T.sblock("quantize"):
            T.reads(x[row, 0:k])
            T.writes(xq[row, 0:k // 4], xd[row, 0:blocks], xs[row, 0:blocks])
            q = T.sblock_alloc_buffer((BLOCK,), "int32")
            for b in T.serial(blocks):
                quantize_block(x, row, xq, xd, xs, q, row, b)

    @T.prim_func(private=True, s_tir=True)
    def quantize_rows(var_x: T.handle, var_xq: T.handle, var_xd: T.handle, var_xs: T.handle):
        T.func_attr(HAND_WRITTEN)
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        xq, xd, xs = match_quantized_rows(m, k, var_xq, var_xd, var_xs)
        serial_or_parallel(m * k < SERIAL_QUANTIZE, m, m, quantize_row, (x, xq, xd, xs))

    return quantize_rows


@cached_kernel
def matmul_kernel(scheme: str, n: int, k: int, target: Target, path: str | None = None):
    """(xq, xd, xs, qs, scales, y [m, N] f32): y = dequantized x @ dequantized W.T.

    The tiles are split into one contiguous range per core (the target's num-cores). Each task
    walks K in chunks of K_CHUNK blocks and, per chunk, its tiles; per tile the activation rows
    go in groups (as many as the registers hold, then one group of the remaining rows), each
    group unpacking every weight block once for all its rows. The chunks keep the activations
    a group reads in L1 while the weights stream past. path: one of isa.DOT_PATHS, by default
    the target's best (isa.dot_path).
    """
    layout = PackedLayout(scheme, n, k)
    path = path or dot_path(target)
    if path not in DOT_PATHS:
        raise ValueError(f"unknown dot product path '{path}' (known: {', '.join(DOT_PATHS)})")
    q4 = scheme == "q4"
    rows, signed, make_ops = DOT_PATHS[path]
    ops = make_ops(q4)
    sums = T.ramp(0, 1, ops.lanes)
    tiles, full_tiles, blocks = layout.tiles, layout.full_tiles, layout.blocks
    qbytes, nscales, per = layout.qbytes, layout.nscales, layout.scale_blocks
    (qs_rows, _), (sc_rows, _) = layout.shapes
    tasks = max(1, min(tiles, int(target.attrs.get("num-cores", 1))))
    chunks = layout.chunks
    lanes = T.ramp(0, 1, TILE)  # the 16 lanes of a tile: one per weight row
    ahead = PREFETCH_BYTES // qbytes  # packed rows
    serial_work = layout.nbytes + ROW_COST * tiles * blocks

    # Expression builders (plain functions: TVMScript macros are slow to expand).
    def q8_operand(qs, p, j):
        """The weight bytes of block p that pair with activation word j (k = 4j .. 4j + 3)."""
        if signed:  # q + 128 -> q: flip the top bit
            return qs[p, T.ramp(j * OPERAND_BYTES, 1, OPERAND_BYTES)] ^ T.Broadcast(T.uint8(128), OPERAND_BYTES)
        return qs[p, T.ramp(j * OPERAND_BYTES, 1, OPERAND_BYTES)]

    def scaled(acc, dot, sc, xd, xs, p, b, r, row):
        """acc + block b's exact integer sum, scaled (p: the scales row of its group). A weight zero
        point comes back through the activation block sum: + mn * xs for q4, - 128 * d * xs for
        q8 on unsigned paths."""
        d = T.Cast("float32x16", sc[p, lanes])
        total = acc[r, lanes] + d * (T.Cast("float32x16", ops.total(dot, r)) * T.Broadcast(xd[row, b], TILE))
        if q4:
            return total + T.Cast("float32x16", sc[p, T.ramp(TILE, 1, TILE)]) * T.Broadcast(xs[row, b], TILE)
        if signed:
            return total
        # d * -128 is the same for all rows of the group (computed once), xs a broadcast load.
        return total + d * T.Broadcast(T.float32(-128), TILE) * T.Broadcast(xs[row, b], TILE)

    @T.macro
    def row_group(count, row0, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w):
        for r in T.unroll(count):
            # The first chunk starts from zero, later ones from the partial sums left in y.
            acc[r, lanes] = T.Broadcast(T.float32(0), TILE)
            if chunks > 1:
                if c > 0:
                    if t < full_tiles:
                        acc[r, lanes] = y[row0 + r, T.ramp(t * TILE, 1, TILE)]
                    else:
                        for lane in T.serial(n - full_tiles * TILE):
                            acc[r, lane] = y[row0 + r, t * TILE + lane]
        # This tile's blocks of chunk c are contiguous in the packed arrays.
        first: T.let[T.int32] = layout.first_block(c, t, T.min)
        first_group: T.let[T.int32] = layout.first_group(c, t, T.min)
        span: T.let[T.int32] = T.min(K_CHUNK, blocks - c * K_CHUNK)
        for i in T.serial(span):
            # The first group streams this tile from memory; the second, which finds it cached,
            # hints the next tile, so that later groups' arithmetic overlaps its fetch.
            if ahead > 0 and (q4 or count > 1) and row0 <= rows:
                lead: T.let[T.int32] = T.if_then_else(row0 > 0, span, 0) + i + ahead
                for line in T.unroll(qbytes // 64):
                    prefetch(qs, first + lead, line * 64)
                prefetch(sc, first_group + lead // per)
            for r in T.unroll(count):
                dot[r, sums] = T.Broadcast(T.Cast(ops.dtype, 0), ops.lanes)
            # Each weight operand is unpacked once for all rows of the group.
            if q4:
                for j in T.unroll(4):  # low nibbles pair with word j, high ones with word j + 4
                    w[T.ramp(0, 1, 64)] = qs[first + i, T.ramp(j * 64, 1, 64)] & T.Broadcast(T.uint8(15), 64)
                    for r in T.unroll(count):
                        dot[r, sums] = ops.add(dot, w, r, xq, row0 + r, (c * K_CHUNK + i) * 8, j)
                    w[T.ramp(0, 1, 64)] = qs[first + i, T.ramp(j * 64, 1, 64)] >> T.Broadcast(T.uint8(4), 64)
                    for r in T.unroll(count):
                        dot[r, sums] = ops.add(dot, w, r, xq, row0 + r, (c * K_CHUNK + i) * 8, j + 4)
            else:
                for j in T.unroll(8):
                    w[T.ramp(0, 1, 64)] = q8_operand(qs, first + i, j)
                    for r in T.unroll(count):
                        dot[r, sums] = ops.add(dot, w, r, xq, row0 + r, (c * K_CHUNK + i) * 8, j)
            for r in T.unroll(count):
                acc[r, lanes] = scaled(acc, dot, sc, xd, xs, first_group + i // per, c * K_CHUNK + i, r, row0 + r)
        for r in T.unroll(count):
            if t < full_tiles:
                y[row0 + r, T.ramp(t * TILE, 1, TILE)] = acc[r, lanes]
            else:
                for lane in T.serial(n - full_tiles * TILE):  # the padded rows are dropped
                    y[row0 + r, t * TILE + lane] = acc[r, lane]

    @T.macro
    def work(task, ntasks, m, xq, xd, xs, qs, sc, y):
        with T.sblock("task"):
            T.reads(xq[0:m, 0:k // 4], xd[0:m, 0:blocks], xs[0:m, 0:blocks],
                    qs[0:qs_rows, 0:qbytes], sc[0:sc_rows, 0:nscales])
            T.writes(y[0:m, 0:n])
            # Small local buffers accessed with constant indices: LLVM keeps them in registers.
            acc = T.sblock_alloc_buffer((rows, TILE), "float32")
            dot = T.sblock_alloc_buffer((rows, ops.lanes), ops.dtype)
            w = T.sblock_alloc_buffer((64,), "uint8")
            for c in T.serial(chunks):
                for t in T.serial(task * tiles // ntasks, (task + 1) * tiles // ntasks):
                    for g in T.serial(m // rows):
                        row_group(rows, g * rows, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)
                    remainder_rows(rows, m, m, row_group, (t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w))

    @T.prim_func(private=True, s_tir=True)
    def matmul(var_xq: T.handle, var_xd: T.handle, var_xs: T.handle,
               qs: T.Buffer((qs_rows, qbytes), "uint8"), sc: T.Buffer((sc_rows, nscales), "float16"),
               var_y: T.handle):
        T.func_attr(HAND_WRITTEN)
        m = T.int64()
        xq, xd, xs = match_quantized_rows(m, k, var_xq, var_xd, var_xs)
        y = T.match_buffer(var_y, (m, n), "float32")
        if serial_work <= SERIAL_WORK_BYTES:  # static: a small weight, serial for few rows
            serial_or_parallel(layout.nbytes + ROW_COST * tiles * blocks * m <= SERIAL_WORK_BYTES, 1, tasks,
                               work, (m, xq, xd, xs, qs, sc, y))
        else:
            for task in T.parallel(tasks):
                work(task, tasks, m, xq, xd, xs, qs, sc, y)

    return matmul
