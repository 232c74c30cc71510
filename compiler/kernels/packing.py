"""numpy side of the kernels: weights into the layouts the matmuls and lookups read (every
format), back out for checks, and the int8 model of the activation quantizer.

  dense   f32 / f16 tiles [tiles * K, TILE]: row t * K + k holds W[16t .. 16t + 15, k]
  packed  q8: symmetric int8, W ~= d * q, q in -127..127 stored as q + 128, one d per
          SCALE_BLOCKS blocks and row; q4: W ~= d * q + mn, q in 0..15, d and mn per block
          and row (layout.PackedLayout has the addresses)
"""

from __future__ import annotations

import numpy as np

from .common import TILE, tile_count
from .layout import BLOCK, PackedLayout

DENSE_DTYPES = {"f32": "float32", "f16": "float16"}
_PACK_TILES = 512  # tiles quantized at once: bounds the f32 temporaries for a vocabulary-sized weight


# -- dense -------------------------------------------------------------------------------------

def dense_shape(n: int, k: int) -> tuple[int, int]:
    return tile_count(n) * k, TILE


def pack_dense(weight: np.ndarray, dtype: str) -> np.ndarray:
    """An nn.Linear weight [N, K] -> the dense matmul's tiles [T * K, 16] in `dtype`."""
    weight = np.asarray(weight)
    n, k = weight.shape
    tiles = tile_count(n)
    padded = np.zeros((tiles * TILE, k), np.float32)
    padded[:n] = weight
    return np.ascontiguousarray(padded.reshape(tiles, TILE, k).transpose(0, 2, 1).reshape(tiles * k, TILE).astype(dtype))


def unpack_dense(tiles: np.ndarray, n: int, k: int) -> np.ndarray:
    """The [N, K] weight back from its tiles."""
    t = tile_count(n)
    return tiles.reshape(t, k, TILE).transpose(0, 2, 1).reshape(t * TILE, k)[:n]


# -- packed (q8, q4) ---------------------------------------------------------------------------

def pack(weight: np.ndarray, scheme: str) -> dict[str, np.ndarray]:
    """Quantize an nn.Linear weight [N, K] into the packed layout: {"qs": uint8, "scales": f16}."""
    weight = np.asarray(weight)
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D [out_features, in_features] weight, got shape {weight.shape}")
    layout = PackedLayout(scheme, *weight.shape)
    n, k, tiles, blocks = layout.n, layout.k, layout.tiles, layout.blocks
    qs = np.empty((tiles, blocks, layout.qbytes), np.uint8)
    scales = np.empty((tiles, layout.groups, layout.nscales), np.float16)
    quantize = _quantize_q8 if scheme == "q8" else _quantize_q4
    for t0 in range(0, tiles, _PACK_TILES):
        t1 = min(tiles, t0 + _PACK_TILES)
        w = np.zeros(((t1 - t0) * TILE, k), np.float32)  # the last tile's missing rows stay zero
        rows = weight[t0 * TILE:min(n, t1 * TILE)]
        w[:len(rows)] = rows
        # [tiles, 16 rows, blocks, 32] -> [tiles, blocks, 16 rows, 32]
        w = w.reshape(t1 - t0, TILE, blocks, BLOCK).transpose(0, 2, 1, 3)
        q, scales[t0:t1] = quantize(w, layout)
        qs[t0:t1] = _interleave(q, layout)
    return _in_layout_order(qs, scales, layout)


def pack_q4_blocks(blocks: np.ndarray) -> dict[str, np.ndarray]:
    """GGUF Q4_1 blocks [N, K/32, 20] (f16 d, f16 m, then byte i: weight i low, weight i + 16 high)
    -> the packed q4 layout, value for value: the same blocks, scale, minimum and nibble pairing."""
    n, blocks_per_row, block_bytes = blocks.shape
    if block_bytes != 20:
        raise ValueError(f"expected Q4_1 blocks of 20 bytes, got {block_bytes}")
    layout = PackedLayout("q4", n, blocks_per_row * BLOCK)
    tiles = layout.tiles
    padded = np.zeros((tiles * TILE, blocks_per_row, block_bytes), np.uint8)  # missing rows: d = m = 0
    padded[:n] = blocks
    d_m = np.ascontiguousarray(padded[..., :4]).view(np.float16)  # [rows, blocks, (d, m)]
    scales = d_m.reshape(tiles, TILE, blocks_per_row, 2).transpose(0, 2, 3, 1).reshape(tiles, blocks_per_row, -1)
    qs = np.empty((tiles, blocks_per_row, layout.qbytes), np.uint8)
    qs[..., _byte_map(layout)[:, :BLOCK // 2]] = padded[..., 4:].reshape(tiles, TILE, blocks_per_row, -1).transpose(0, 2, 1, 3)
    return _in_layout_order(qs, scales, layout)


def _in_layout_order(qs: np.ndarray, scales: np.ndarray, layout: PackedLayout) -> dict[str, np.ndarray]:
    """qs [tiles, blocks, qbytes] and scales [tiles, groups, nscales] -> the arrays in packed row order."""
    block_rows, group_rows = _rows(layout)
    return {"qs": qs.reshape(layout.tiles * layout.blocks, -1)[block_rows.ravel().argsort()],
            "scales": scales.reshape(layout.tiles * layout.groups, -1)[group_rows.ravel().argsort()]}


def dequantize(packed: dict[str, np.ndarray], scheme: str, n: int, k: int) -> np.ndarray:
    """The f32 weight [N, K] the kernels effectively multiply with (d * q, or d * q + mn)."""
    layout = PackedLayout(scheme, n, k)
    tiles, blocks = layout.tiles, layout.blocks
    block_rows, group_rows = _rows(layout)
    qs = packed["qs"][block_rows.ravel()].reshape(tiles, blocks, -1)
    scales = packed["scales"][group_rows.ravel()].reshape(tiles, -1, layout.nscales).astype(np.float32)
    scales = np.repeat(scales, layout.scale_blocks, axis=1)[:, :blocks]  # each block's scales
    byte = _byte_map(layout)
    if scheme == "q8":
        w = (qs[..., byte].astype(np.float32) - 128) * scales[..., None]
    else:
        low = qs[..., byte[:, :BLOCK // 2]]
        q = np.concatenate([low & 15, low >> 4], axis=3)
        w = q.astype(np.float32) * scales[..., :TILE, None] + scales[..., TILE:, None]
    return w.transpose(0, 2, 1, 3).reshape(tiles * TILE, k)[:n]


def packed_bytes(packed: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in packed.values())


def _rows(layout: PackedLayout) -> tuple[np.ndarray, np.ndarray]:
    """[tiles, blocks] -> packed row, and [tiles, groups] -> scales row."""
    t, b = np.meshgrid(np.arange(layout.tiles), np.arange(layout.blocks), indexing="ij")
    tg, g = np.meshgrid(np.arange(layout.tiles), np.arange(layout.groups), indexing="ij")
    return layout.block_row(t, b, np.minimum), layout.group_row(tg, g, np.minimum)


def _byte_map(layout: PackedLayout) -> np.ndarray:
    """[TILE, BLOCK]: the byte of a packed row holding each (row of the tile, weight of the block)."""
    lane, w = np.meshgrid(np.arange(TILE), np.arange(BLOCK), indexing="ij")
    return layout.byte_of(lane, w)


def _interleave(q: np.ndarray, layout: PackedLayout) -> np.ndarray:
    """q [t, b, 16, 32] (small ints) -> the packed bytes [t, b, qbytes]."""
    out = np.empty((*q.shape[:2], layout.qbytes), np.uint8)
    byte = _byte_map(layout)
    if layout.scheme == "q8":
        out[..., byte] = q
    else:
        out[..., byte[:, :BLOCK // 2]] = q[..., :BLOCK // 2] | (q[..., BLOCK // 2:] << 4)
    return out


def _quantize_q8(w: np.ndarray, layout: PackedLayout):
    """w [t, b, 16, 32] -> (q + 128 [t, b, 16, 32], d [t, g, 16]): one scale per row and group."""
    per = layout.scale_blocks
    amax = np.abs(w).max(axis=3)  # [t, b, 16]
    padded = np.zeros((amax.shape[0], -(-amax.shape[1] // per) * per, TILE), np.float32)
    padded[:, :amax.shape[1]] = amax
    d = (padded.reshape(amax.shape[0], -1, per, TILE).max(axis=2) / 127).astype(np.float16)
    inv = np.repeat(_safe_inverse(d.astype(np.float32)), per, axis=1)[:, :amax.shape[1]]
    q = np.clip(np.rint(w * inv[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), d


def _quantize_q4(w: np.ndarray, layout: PackedLayout):
    """w [t, b, 16, 32] -> (q [t, b, 16, 32], d then mn [t, b, 32])."""
    mn = w.min(axis=3).astype(np.float16)
    span = w.max(axis=3) - mn.astype(np.float32)
    d = (span / 15).astype(np.float16)
    inv = _safe_inverse(d.astype(np.float32))
    q = np.clip(np.rint((w - mn.astype(np.float32)[..., None]) * inv[..., None]), 0, 15).astype(np.uint8)
    return q, np.concatenate([d, mn], axis=2)


def _safe_inverse(d: np.ndarray) -> np.ndarray:
    """1/d, and 0 where d is 0 (an all-zero block quantizes to zeros)."""
    return np.divide(1, d, out=np.zeros_like(d), where=d != 0)


# -- activations ----------------------------------------------------------------------------------

def quantize_activations(x: np.ndarray):
    """numpy model of the activation quantizer: (xq int32 [m, K/4], xd f32 [m, K/32], xs f32 [m, K/32])."""
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
    """The f32 activations a quantized-rows result stands for: xd * q per block."""
    q = np.ascontiguousarray(xq).view(np.int8).astype(np.float32)
    m, k = q.shape
    return (q.reshape(m, k // BLOCK, BLOCK) * xd[..., None]).reshape(m, k)
