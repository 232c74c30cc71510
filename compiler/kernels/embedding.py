"""Row lookups (TIR): token rows of an embedding table in the weight format (dequantizing
just the rows read), and the last row of a [n, width] activation (prefill's logits)."""

from __future__ import annotations

from tvm.script import tirx as T

from .cache import cached_kernel
from .common import HAND_WRITTEN, TILE
from .layout import BLOCK, K_CHUNK, PackedLayout
from .packing import dense_shape


def _min64(a, b):
    return T.min(T.int64(a), b)


@cached_kernel
def dense_lookup_kernel(vocab: int, width: int, dtype: str, scale: float | None = None):
    """(tokens [n] i32, tiles, out [n, width] f32): rows of a dense table in tiles
    (packing.pack_dense: row t * width + k holds token 16t + lane's k), times `scale` if given."""
    shape = dense_shape(vocab, width)
    factor = 1.0 if scale is None else scale

    @T.prim_func(private=True, s_tir=True)
    def embed(var_tokens: T.handle, tiles: T.Buffer(shape, dtype), var_out: T.handle):
        T.func_attr(HAND_WRITTEN)
        n = T.int64()
        tokens = T.match_buffer(var_tokens, (n,), "int32")
        out = T.match_buffer(var_out, (n, width), "float32")
        for t, i in T.grid(n, width):
            with T.sblock("embed"):
                vt, vi = T.axis.remap("SS", [t, i])
                token: T.let[T.int64] = T.Cast("int64", tokens[vt])
                if scale is None:
                    out[vt, vi] = T.Cast("float32", tiles[token // TILE * width + vi, token % TILE])
                else:
                    out[vt, vi] = T.Cast("float32", tiles[token // TILE * width + vi, token % TILE]) * T.float32(factor)

    return embed


@cached_kernel
def packed_lookup_kernel(scheme: str, vocab: int, width: int, scale: float | None = None):
    """(tokens [n] i32, qs, scales, out [n, width] f32): rows of a packed table, times `scale` if given."""
    factor = 1.0 if scale is None else scale
    layout = PackedLayout(scheme, vocab, width)
    (rows, qbytes), (scale_rows, nscales) = layout.shapes
    q4, per = scheme == "q4", layout.scale_blocks

    @T.prim_func(private=True, s_tir=True)
    def embed(var_tokens: T.handle, qs: T.Buffer((rows, qbytes), "uint8"),
              scales: T.Buffer((scale_rows, nscales), "float16"), var_out: T.handle):
        T.func_attr(HAND_WRITTEN)
        n = T.int64()
        tokens = T.match_buffer(var_tokens, (n,), "int32")
        out = T.match_buffer(var_out, (n, width), "float32")
        for t, i in T.grid(n, T.int64(width)):
            with T.sblock("embed"):
                vt, vi = T.axis.remap("SS", [t, i])
                token: T.let[T.int64] = T.Cast("int64", tokens[vt])
                tile: T.let[T.int64] = token // TILE
                lane: T.let[T.int64] = token % TILE
                b: T.let[T.int64] = vi // BLOCK
                c: T.let[T.int64] = b // K_CHUNK
                p: T.let[T.int64] = layout.first_block(c, tile, _min64) + b % K_CHUNK
                g: T.let[T.int64] = b // per
                s: T.let[T.int64] = layout.first_group(c, tile, _min64) + g % layout.group_chunk
                w: T.let[T.int64] = vi % BLOCK
                if q4:
                    byte: T.let[T.uint8] = qs[p, layout.byte_of(lane, w)]
                    nibble: T.let[T.uint8] = T.if_then_else(w < 16, byte & T.uint8(15), byte >> T.uint8(4))
                    if scale is None:
                        out[vt, vi] = T.Cast("float32", nibble) * T.Cast("float32", scales[s, lane]) \
                            + T.Cast("float32", scales[s, TILE + lane])
                    else:
                        out[vt, vi] = (T.Cast("float32", nibble) * T.Cast("float32", scales[s, lane])
                                       + T.Cast("float32", scales[s, TILE + lane])) * T.float32(factor)
                elif scale is None:
                    out[vt, vi] = (T.Cast("float32", qs[p, layout.byte_of(lane, w)]) - T.float32(128)) \
                        * T.Cast("float32", scales[s, lane])
                else:
                    out[vt, vi] = (T.Cast("float32", qs[p, layout.byte_of(lane, w)]) - T.float32(128)) \
                        * T.Cast("float32", scales[s, lane]) * T.float32(factor)

    return embed


@cached_kernel
def last_row_kernel(width: int):
    """(x [n, width] f32, out [1, width] f32): out = x[n - 1]."""
    @T.prim_func(private=True, s_tir=True)
    def last_row(var_x: T.handle, out: T.Buffer((1, width), "float32")):
        T.func_attr(HAND_WRITTEN)
        n = T.int64()
        x = T.match_buffer(var_x, (n, width), "float32")
        for i in range(width):
            with T.sblock("last_row"):
                vi = T.axis.spatial(width, i)
                out[0, vi] = x[n - 1, vi]

    return last_row
