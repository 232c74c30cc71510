"""Quantized-weight linear layers for CPUs: weight packing (numpy) and kernels (TIR).

    y[m, n] = sum_k x[m, k] * W[n, k]        x: [m, K] f32 (m dynamic), W: [N, K] (nn.Linear), y: [m, N] f32

Schemes (blocks of 32 along K; f16 scales per output row and group of SCALE_BLOCKS blocks):
  q8   symmetric int8: W ~= d * q, q in -127..127, stored as q + 128 (uint8); one d per 128 k
       (4 blocks): 8.125 bits per weight instead of 8.5 with a scale per block, so 4.4% fewer
       bytes per token. On Qwen2.5-0.5B (random weights) the KL divergence to f32 went from
       0.00023 to 0.00036; int8 has the range to spare.
  q4   4-bit with a per-block minimum: W ~= d * q + mn, q in 0..15, f16 d and mn. Measured against
       symmetric 4-bit (llama.cpp Q4_0 style, q in -8..7) on random normal weights the minimum cuts
       the relative error of x @ W.T from 0.085 to 0.078, and on heavy-tailed (Student t3) weights
       from 0.125 to 0.101; it costs 5.0 instead of 4.5 bits per weight.

Activations are quantized per row and 32-block to int8 (symmetric, f32 scale) by a small kernel,
so the block dot products are exact int32 sums of byte products, then one convert and two FMAs
per block. The byte dot products (DOT_PATHS, chosen from the target CPU by dot_path):
  vnni     AVX-512 VNNI: one vpdpbusd per 64 weight bytes (16 output rows x 4 k)
  avx512   AVX-512BW without VNNI: vpmaddubsw + vpmaddwd
  avx2     AVX2: the same on 256-bit halves
  sdot     AArch64 with the dot product extension: four sdot per 64 bytes
  generic  any LLVM target: widening multiplies (slow)
All paths give the same integers. A weight zero point (the minimum for q4; 128 for q8 where the
instruction takes unsigned weights) is corrected with the activation block sum.

Call order (build_linear_funcs returns both PrimFuncs):
  1. quantize_rows(x [m, K] f32) -> xq [m, K/4] int32   (4 int8 values per word, little endian)
                                    xd [m, K/32] f32    (activation scale per block)
                                    xs [m, K/32] f32    (xd * sum of the block's int8 values)
  2. matmul(xq, xd, xs, qs, scales) -> y [m, N] f32
One quantize_rows result can feed every matmul that reads the same x (q/k/v, gate/up).

Packed weights (pack()): output rows padded to tiles of 16 (T = ceil(N / 16) tiles), B = K / 32
blocks. Each (tile t, block b) is one packed row; rows go chunk by chunk of CHUNK blocks, within a
chunk tile by tile, within a tile block by block (_positions), so that a core streams its tiles'
share of a chunk from one contiguous range.
  qs      uint8   [T * B, 512] (q8) or [T * B, 256] (q4)
          q8: byte 64*j + 4*l + c holds row 16t+l, k = 32b + 4j + c            (j = 0..7)
          q4: byte 64*j + 4*l + c holds row 16t+l: low nibble k = 32b + 4j + c,
              high nibble k = 32b + 16 + 4j + c                                  (j = 0..3)
          so one 64-byte load is one vpdpbusd operand: 16 rows (one i32 lane each) x 4 k.
  scales  float16 [T * G, 16] (q8: d) or [T * G, 32] (q4: d for the 16 rows, then their mn), with
          G = ceil(B / SCALE_BLOCKS) groups, in the same chunk-major order over (tile, group)
The same packed arrays serve every path, target and thread count.
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T
from tvm.target import Target, codegen

SCHEMES = ("q4", "q8")
BLOCK = 32  # weights and activations share one scale per 32 consecutive k
TILE = 16  # output rows per tile: one int32 lane of a 512-bit register each
SERIAL_QUANTIZE = 65536  # m * K below which quantize_rows runs on one thread (up to ~25 us)
# Work up to which matmul runs on the calling thread alone, counted as weight bytes plus
# ROW_COST per block and activation row (the bytes one core streams in the time it computes
# one). Measured with two real threads: 256 KB against 2 MB, Qwen2.5-0.5B q4 verify(5)
# 9.1 -> 8.5 ms, decode alike within noise; the trained draft's q8 step 36 -> 30 us.
SERIAL_BYTES = 256 << 10
ROW_COST = 64
# How far ahead the packed weights are hinted (prefetch), in verify/prefill row groups, and
# for q4 in decode too. On Qwen2.5-0.5B: q4 verify(5) 13.3-13.9 -> 10.3-10.7 ms with decode
# unchanged; q8 verify(5) 20.6-21.1 -> 17.6-17.9 ms, but q8 decode 14.1-14.8 -> 15.9 ms with the
# hints (eight per 512-byte block), so a q8 decode step runs without them. At 2 KB ahead the
# hints made decode slower and verify gained less. (Measured with the runtime on one thread.
# On two, q8 decode with the hints: 10.36 against 10.34 ms per token, and 0-2% either way per
# kernel at 0, 4, 8 and 16 KB ahead; so it stays without.)
PREFETCH_BYTES = 8192
CHUNK = 32  # K blocks walked per tile before moving to the next tile (activations stay in L1)
_QBYTES = {"q8": 512, "q4": 256}  # packed bytes per tile and block
_NSCALES = {"q8": 16, "q4": 32}  # f16 scales per tile and group
SCALE_BLOCKS = {"q8": 4, "q4": 1}  # blocks of 32 per scale group (CHUNK is a multiple)


def _check(scheme: str, n: int, k: int) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weight quantization scheme '{scheme}' (known: {', '.join(SCHEMES)})")
    if n < 1 or k < 1 or k % BLOCK:
        raise ValueError(f"cannot quantize a [{n}, {k}] weight: K (in_features) must be a positive "
                         f"multiple of {BLOCK}, got {k}")


def _tiles(n: int) -> int:
    return -(-n // TILE)


def _groups(scheme: str, blocks: int) -> int:
    return -(-blocks // SCALE_BLOCKS[scheme])


def packed_shapes(scheme: str, n: int, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The shapes of pack()'s "qs" and "scales" for an [n, k] weight (not checked here: the
    compiler names a width that is not a multiple of BLOCK in its own error)."""
    tiles, blocks = _tiles(n), k // BLOCK
    return (tiles * blocks, _QBYTES[scheme]), (tiles * _groups(scheme, blocks), _NSCALES[scheme])


# -- packing (numpy) -----------------------------------------------------------------------------

def pack(weight: np.ndarray, scheme: str) -> dict[str, np.ndarray]:
    """Quantize an nn.Linear weight [N, K] into the kernels' layout: {"qs": uint8, "scales": f16}."""
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D [out_features, in_features] weight, got shape {weight.shape}")
    n, k = weight.shape
    _check(scheme, n, k)
    tiles, blocks, groups = _tiles(n), k // BLOCK, _groups(scheme, k // BLOCK)
    qs = np.empty((tiles, blocks, _QBYTES[scheme]), np.uint8)
    scales = np.empty((tiles, groups, _NSCALES[scheme]), np.float16)
    step = 512  # tiles per chunk: bounds the f32 temporaries for a vocabulary-sized weight
    for t0 in range(0, tiles, step):
        t1 = min(tiles, t0 + step)
        w = np.zeros(((t1 - t0) * TILE, k), np.float32)  # the last tile's missing rows stay zero
        rows = weight[t0 * TILE:min(n, t1 * TILE)]
        w[:len(rows)] = rows
        # [tiles, 16 rows, blocks, 32] -> [tiles, blocks, 16 rows, 32]
        w = w.reshape(t1 - t0, TILE, blocks, BLOCK).transpose(0, 2, 1, 3)
        quantize = _quantize_q8 if scheme == "q8" else _quantize_q4
        qs[t0:t1], scales[t0:t1] = quantize(w)
    # packed row -> (tile, block) in row-major order; the scales likewise over (tile, group)
    order = _positions(tiles, blocks).ravel().argsort()
    scale_order = _positions(tiles, groups, CHUNK // SCALE_BLOCKS[scheme]).ravel().argsort()
    return {"qs": qs.reshape(tiles * blocks, -1)[order], "scales": scales.reshape(tiles * groups, -1)[scale_order]}


def _positions(tiles: int, blocks: int, chunk: int = CHUNK) -> np.ndarray:
    """[tiles, blocks] -> packed row: chunk-major, then tile, then block within the chunk.

    A core walks chunk c of its range of tiles as one contiguous stream, like the kernel.
    The scale groups use the same order with chunk = CHUNK / SCALE_BLOCKS."""
    t, b = np.meshgrid(np.arange(tiles), np.arange(blocks), indexing="ij")
    c = b // chunk
    return c * chunk * tiles + t * np.minimum(chunk, blocks - c * chunk) + b % chunk


def _quantize_q8(w: np.ndarray):
    """w [t, b, 16, 32] -> (q [t, b, 512], d [t, g, 16]): one scale per row and group of blocks."""
    per = SCALE_BLOCKS["q8"]
    amax = np.abs(w).max(axis=3)  # [t, b, 16]
    padded = np.zeros((amax.shape[0], -(-amax.shape[1] // per) * per, TILE), np.float32)
    padded[:, :amax.shape[1]] = amax
    d = (padded.reshape(amax.shape[0], -1, per, TILE).max(axis=2) / 127).astype(np.float16)
    inv = np.repeat(_safe_inverse(d.astype(np.float32)), per, axis=1)[:, :amax.shape[1]]
    q = np.clip(np.rint(w * inv[..., None]), -127, 127).astype(np.int16) + 128
    # [t, b, l, 32] -> [t, b, j, l, c] with k = 4j + c
    q = q.reshape(*q.shape[:3], 8, 4).transpose(0, 1, 3, 2, 4)
    return q.reshape(*q.shape[:2], 512).astype(np.uint8), d


def _quantize_q4(w: np.ndarray):
    mn = w.min(axis=3).astype(np.float16)
    span = w.max(axis=3) - mn.astype(np.float32)
    d = (span / 15).astype(np.float16)
    inv = _safe_inverse(d.astype(np.float32))
    q = np.clip(np.rint((w - mn.astype(np.float32)[..., None]) * inv[..., None]), 0, 15).astype(np.uint8)
    # [t, b, l, 32] -> [t, b, half, j, l, c] with k = 16 * half + 4j + c
    q = q.reshape(*q.shape[:3], 2, 4, 4).transpose(0, 1, 3, 4, 2, 5)
    packed = q[:, :, 0] | (q[:, :, 1] << 4)
    return packed.reshape(*packed.shape[:2], 256), np.concatenate([d, mn], axis=2)


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    """1/d, and 0 where d is 0 (an all-zero block quantizes to zeros)."""
    return np.divide(1, d, out=np.zeros_like(d), where=d != 0)


def dequantize(packed: dict[str, np.ndarray], scheme: str, n: int, k: int) -> np.ndarray:
    """The f32 weight [N, K] the kernel effectively multiplies with (d * q, or d * q + mn)."""
    _check(scheme, n, k)
    tiles, blocks, per = _tiles(n), k // BLOCK, SCALE_BLOCKS[scheme]
    qs = packed["qs"][_positions(tiles, blocks).ravel()].reshape(tiles, blocks, -1)
    groups = _positions(tiles, _groups(scheme, blocks), CHUNK // per).ravel()
    scales = packed["scales"][groups].reshape(tiles, -1, _NSCALES[scheme]).astype(np.float32)
    scales = np.repeat(scales, per, axis=1)[:, :blocks]  # each block's scales
    if scheme == "q8":
        q = qs.reshape(tiles, blocks, 8, TILE, 4).transpose(0, 1, 3, 2, 4).reshape(tiles, blocks, TILE, BLOCK)
        w = (q.astype(np.float32) - 128) * scales[..., None]
    else:
        nib = np.stack([qs & 15, qs >> 4], axis=2).reshape(tiles, blocks, 2, 4, TILE, 4)
        q = nib.transpose(0, 1, 4, 2, 3, 5).reshape(tiles, blocks, TILE, BLOCK)
        w = q.astype(np.float32) * scales[..., :TILE, None] + scales[..., TILE:, None]
    return w.transpose(0, 2, 1, 3).reshape(tiles * TILE, k)[:n]


def packed_bytes(packed: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in packed.values())


def quantize_activations(x: np.ndarray):
    """numpy model of quantize_rows: (xq int32 [m, K/4], xd f32 [m, K/32], xs f32 [m, K/32])."""
    x = np.asarray(x, np.float32)
    m, k = x.shape
    b = x.reshape(m, k // BLOCK, BLOCK)
    amax = np.abs(b).max(axis=2)
    xd = (amax / np.float32(127)).astype(np.float32)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)  # as the kernel: 127 / amax
    q = np.clip(np.rint(b * inv[..., None]), -127, 127).astype(np.int8)
    xs = (xd * q.astype(np.int32).sum(axis=2)).astype(np.float32)
    return q.reshape(m, k).view(np.int32), xd, xs


def activations_f32(xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
    """The f32 activations a quantize_rows result stands for: xd * q per block."""
    q = np.ascontiguousarray(xq).view(np.int8).astype(np.float32)
    m, k = q.shape
    return (q.reshape(m, k // BLOCK, BLOCK) * xd[..., None]).reshape(m, k)


# -- kernels (TIR) ---------------------------------------------------------------------------------

def prefetch(buffer, row, column=0):
    """Hint the cache line holding buffer[row, column] (read, keep in all levels); a hint past
    the end of the buffer is harmless. The matmuls hint their weight streams PREFETCH_BYTES
    ahead: with several activation rows per weight load the hardware prefetcher alone left
    DRAM idle between bursts."""
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(buffer[row, column]),
                                         T.int32(0), T.int32(3), T.int32(1)))


def dot_path(target: Target) -> str:
    """How the target computes 4-byte dot products, best first (see DOT_PATHS)."""
    def has(*features):
        return bool(codegen.llvm_cpu_has_features(list(features), target))

    if has("avx512vnni", "avx512bw"):
        return "vnni"
    if has("avx512bw"):
        return "avx512"
    if has("avx2"):
        return "avx2"
    if has("dotprod"):
        return "sdot"
    return "generic"


def build_linear_funcs(scheme: str, n: int, k: int, target: Target, path: str | None = None):
    """[(name, PrimFunc)]: quantize_rows then matmul; see the module docstring for the buffers."""
    return [(f"quantize_rows_k{k}", quantize_kernel(k)),
            (f"matmul_{scheme}_n{n}_k{k}", matmul_kernel(scheme, n, k, target, path))]


@T.macro
def quantize_block(src, src_row, xq, xd, xs, q, row, b):
    """Block b of src[src_row] -> row `row` of (xq, xd, xs); q: a local int32 [BLOCK] buffer.
    Shared with the fused row kernels (row_kernels.py), so every path quantizes alike."""
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


def quantize_kernel(k: int):
    """(x [m, K] f32, xq [m, K/4] i32, xd [m, K/32] f32, xs [m, K/32] f32): one row at a time."""
    _check(SCHEMES[0], 1, k)
    blocks = k // BLOCK

    @T.macro
    def quantize_row(x, xq, xd, xs, row):
        with T.sblock("quantize"):
            T.reads(x[row, 0:k])
            T.writes(xq[row, 0:k // 4], xd[row, 0:blocks], xs[row, 0:blocks])
            q = T.sblock_alloc_buffer((BLOCK,), "int32")
            for b in T.serial(blocks):
                quantize_block(x, row, xq, xd, xs, q, row, b)

    @T.prim_func(private=True, s_tir=True)
    def quantize_rows(var_x: T.handle, var_xq: T.handle, var_xd: T.handle, var_xs: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        m = T.int64()
        x = T.match_buffer(var_x, (m, k), "float32")
        xq = T.match_buffer(var_xq, (m, k // 4), "int32")
        xd = T.match_buffer(var_xd, (m, blocks), "float32")
        xs = T.match_buffer(var_xs, (m, blocks), "float32")
        if m * k < SERIAL_QUANTIZE:
            for row in T.serial(m):  # decode and verify: waking the other threads costs more
                quantize_row(x, xq, xd, xs, row)
        else:
            for row in T.parallel(m):
                quantize_row(x, xq, xd, xs, row)

    return quantize_rows


def matmul_kernel(scheme: str, n: int, k: int, target: Target, path: str | None = None):
    """(xq, xd, xs, qs, scales, y [m, N] f32): y = dequantized x @ dequantized W.T.

    The tiles of 16 output rows are split into one contiguous range per core (the target's
    num-cores). Each task walks K in chunks of CHUNK blocks and, per chunk, its tiles; per tile
    the activation rows go in groups (as many as the registers hold, then one group of the
    remaining rows), each group unpacking every weight block once for all its rows. The
    chunking keeps the activations a group reads (8 rows x 1 KB) in L1 while the weights stream
    past: with whole rows of K = 4864 they fell out of L1 and a 5-row call took 3x a 1-row call
    instead of 1.4x. path: one of DOT_PATHS, by default the target's best (dot_path).
    """
    _check(scheme, n, k)
    path = path or dot_path(target)
    if path not in DOT_PATHS:
        raise ValueError(f"unknown dot product path '{path}' (known: {', '.join(DOT_PATHS)})")
    q4 = scheme == "q4"
    rows, signed, make_dot4 = DOT_PATHS[path]
    dot4 = make_dot4(q4)
    tiles, full_tiles, blocks = _tiles(n), n // TILE, k // BLOCK
    qbytes, nscales = _QBYTES[scheme], _NSCALES[scheme]
    per, groups = SCALE_BLOCKS[scheme], _groups(scheme, blocks)
    group_chunk = CHUNK // per  # scale groups per chunk of K
    (qs_rows, _), (sc_rows, _) = packed_shapes(scheme, n, k)
    tasks = max(1, min(tiles, int(target.attrs.get("num-cores", 1))))
    chunks = -(-blocks // CHUNK)
    weight_bytes = qs_rows * qbytes + sc_rows * nscales * 2
    lanes = T.ramp(0, 1, TILE)  # the 16 lanes of a tile: one per weight row
    ahead = PREFETCH_BYTES // qbytes  # packed rows

    # Expression builders (plain functions: TVMScript macros are slow to expand).
    def q8_operand(qs, p, j):
        """The 64 weight bytes of block p that pair with activation word j (k = 4j .. 4j + 3)."""
        if signed:  # q + 128 -> q: flip the top bit
            return qs[p, T.ramp(j * 64, 1, 64)] ^ T.Broadcast(T.uint8(128), 64)
        return qs[p, T.ramp(j * 64, 1, 64)]

    def scaled(acc, dot, sc, xd, xs, p, b, r, row):
        """acc + block b's exact integer sum, scaled (p: the scales row of its group). A weight zero
        point comes back through the activation block sum: + mn * xs for q4, - 128 * d * xs for
        q8 on unsigned paths."""
        d = T.Cast("float32x16", sc[p, lanes])
        total = acc[r, lanes] + d * (T.Cast("float32x16", dot[r, lanes]) * T.Broadcast(xd[row, b], TILE))
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
        # This tile's blocks of chunk c are contiguous in the packed arrays (see _positions).
        first: T.let[T.int32] = c * CHUNK * tiles + t * T.min(CHUNK, blocks - c * CHUNK)
        first_group: T.let[T.int32] = c * group_chunk * tiles + t * T.min(group_chunk, groups - c * group_chunk)
        for i in T.serial(T.min(CHUNK, blocks - c * CHUNK)):
            if ahead > 0 and (q4 or count > 1):
                for line in T.unroll(qbytes // 64):
                    prefetch(qs, first + i + ahead, line * 64)
                prefetch(sc, first_group + (i + ahead) // per)
            for r in T.unroll(count):
                dot[r, lanes] = T.Broadcast(T.int32(0), TILE)
            # Each weight operand is unpacked once for all rows of the group.
            if q4:
                for j in T.unroll(4):  # low nibbles pair with word j, high ones with word j + 4
                    w[T.ramp(0, 1, 64)] = qs[first + i, T.ramp(j * 64, 1, 64)] & T.Broadcast(T.uint8(15), 64)
                    for r in T.unroll(count):
                        dot[r, lanes] = dot4(dot, w, r, xq[row0 + r, (c * CHUNK + i) * 8 + j])
                    w[T.ramp(0, 1, 64)] = qs[first + i, T.ramp(j * 64, 1, 64)] >> T.Broadcast(T.uint8(4), 64)
                    for r in T.unroll(count):
                        dot[r, lanes] = dot4(dot, w, r, xq[row0 + r, (c * CHUNK + i) * 8 + j + 4])
            else:
                for j in T.unroll(8):
                    w[T.ramp(0, 1, 64)] = q8_operand(qs, first + i, j)
                    for r in T.unroll(count):
                        dot[r, lanes] = dot4(dot, w, r, xq[row0 + r, (c * CHUNK + i) * 8 + j])
            for r in T.unroll(count):
                acc[r, lanes] = scaled(acc, dot, sc, xd, xs, first_group + i // per, c * CHUNK + i, r, row0 + r)
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
            dot = T.sblock_alloc_buffer((rows, TILE), "int32")
            w = T.sblock_alloc_buffer((64,), "uint8")
            for c in T.serial(chunks):
                for t in T.serial(task * tiles // ntasks, (task + 1) * tiles // ntasks):
                    for g in T.serial(m // rows):
                        row_group(rows, g * rows, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)
                    # The remaining m % rows rows (decode: 1; a verify pass: often all of them),
                    # one group size per branch (the static ifs keep those below `rows`).
                    if rows > 1:
                        if m % rows == 1:
                            row_group(1, m - 1, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)
                    if rows > 2:
                        if m % rows == 2:
                            row_group(2, m - 2, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)
                    if rows > 3:
                        if m % rows == 3:
                            row_group(3, m - 3, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)
                    if rows > 4:
                        if m % rows == 4:
                            row_group(4, m - 4, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)
                    if rows > 5:
                        if m % rows == 5:
                            row_group(5, m - 5, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)
                    if rows > 6:
                        if m % rows == 6:
                            row_group(6, m - 6, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)
                    if rows > 7:
                        if m % rows == 7:
                            row_group(7, m - 7, t, c, m, xq, xd, xs, qs, sc, y, acc, dot, w)

    @T.prim_func(private=True, s_tir=True)
    def matmul(var_xq: T.handle, var_xd: T.handle, var_xs: T.handle,
               qs: T.Buffer((qs_rows, qbytes), "uint8"), sc: T.Buffer((sc_rows, nscales), "float16"),
               var_y: T.handle):
        T.func_attr({"op_pattern": 8, "tirx.is_scheduled": True})  # hand-written: never fused or rescheduled
        m = T.int64()
        xq = T.match_buffer(var_xq, (m, k // 4), "int32")
        xd = T.match_buffer(var_xd, (m, blocks), "float32")
        xs = T.match_buffer(var_xs, (m, blocks), "float32")
        y = T.match_buffer(var_y, (m, n), "float32")
        if weight_bytes + ROW_COST * tiles * blocks <= SERIAL_BYTES:
            # A small weight: below SERIAL_BYTES the calling thread alone is faster.
            if weight_bytes + ROW_COST * tiles * blocks * m <= SERIAL_BYTES:
                for task in T.serial(1):
                    work(task, 1, m, xq, xd, xs, qs, sc, y)
            else:
                for task in T.parallel(tasks):
                    work(task, tasks, m, xq, xd, xs, qs, sc, y)
        else:
            for task in T.parallel(tasks):
                work(task, tasks, m, xq, xd, xs, qs, sc, y)

    return matmul


# -- the 4-byte dot products: the new dot[r] (16 int32 lanes, one per weight row of the tile):
# dot[r] + the 4 weight bytes of each lane in w times the 4 signed activation bytes in `word`.

def _vnni_dot4(dot, w, r, word):
    """AVX-512 VNNI: one vpdpbusd (unsigned weight bytes x signed activation bytes)."""
    return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", dot[r, T.ramp(0, 1, TILE)],
                                   T.reinterpret("int8x64", w[T.ramp(0, 1, 64)]),
                                   T.reinterpret("int8x64", T.Broadcast(word, TILE)))


def _maddubs_dot4(width: int, q4: bool):
    """AVX2 / AVX-512BW: pmaddubsw (u8 x s8 pairs -> i16) then pmaddwd by ones (pairs -> i32).

    pmaddubsw takes unsigned first operands and saturates pairs at int16. q4 weights (0..15) go
    first as they are (a pair is at most 2 * 15 * 127); for q8 (w holds q, signed) the operands
    are |x| and q with the sign of x, so a pair is at most 2 * 127 * 127."""
    pmaddubs, pmaddwd = {32: ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"),
                         64: ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512")}[width]
    lanes = width // 4

    def dot4(dot, w, r, word):
        x = T.reinterpret(f"int8x{width}", T.Broadcast(word, lanes))
        zero = T.Broadcast(T.int8(0), width)
        parts = []
        for h in range(64 // width):
            q = T.reinterpret(f"int8x{width}", w[T.ramp(h * width, 1, width)])
            pairs = T.call_llvm_pure_intrin(f"int16x{width // 2}", pmaddubs, q, x) if q4 else \
                T.call_llvm_pure_intrin(f"int16x{width // 2}", pmaddubs, T.abs(x), T.Select(x < zero, zero - q, q))
            parts.append(T.call_llvm_pure_intrin(f"int32x{lanes}", pmaddwd, pairs, T.Broadcast(T.int16(1), width // 2)))
        return dot[r, T.ramp(0, 1, TILE)] + _concat(parts)

    return dot4


def _sdot_dot4(dot, w, r, word):
    """AArch64 dot product extension: four sdot (signed x signed, 4 lanes each)."""
    x = T.reinterpret("int8x16", T.Broadcast(word, 4))
    return _concat([T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot", dot[r, T.ramp(h * 4, 1, 4)],
                                            T.reinterpret("int8x16", w[T.ramp(h * 16, 1, 16)]), x)
                    for h in range(4)])


def _generic_dot4(dot, w, r, word):
    """Plain widening multiplies: any LLVM target (slow; the others are preferred)."""
    total = dot[r, T.ramp(0, 1, TILE)]
    for c in range(4):
        total = total + T.Cast("int32x16", w[T.ramp(c, 4, TILE)]) \
            * T.Broadcast(T.shift_right(T.shift_left(word, 24 - 8 * c), 24), TILE)
    return total


def _concat(parts):
    """One vector of the 16 lanes of equal parts, in order."""
    if len(parts) == 1:
        return parts[0]
    return T.Shuffle(parts, [T.int32(i) for i in range(TILE)])


# path -> (activation rows per group, weights as signed bytes (q8 used as q, not q + 128),
# q4 -> dot4). The row counts fit the accumulators and weight operands in the register file:
# 32 zmm for AVX-512, 16 ymm for AVX2, 32 q registers for NEON (16 lanes take 4).
DOT_PATHS = {
    "vnni": (8, False, lambda q4: _vnni_dot4),
    "avx512": (8, True, lambda q4: _maddubs_dot4(64, q4)),
    "avx2": (2, True, lambda q4: _maddubs_dot4(32, q4)),
    "sdot": (3, True, lambda q4: _sdot_dot4),
    "generic": (2, False, lambda q4: _generic_dot4),
}
