"""4-byte integer dot products per CPU: a block's sums dot[r] (TILE int32 lanes, one per weight
row; AVX2/AVX-512BW q4: int16 pairs, see DotOps) grow by the 4 weight bytes of each lane in w
times the 4 signed activation bytes of word j of a block (xq[row, first + j], first a multiple
of 8: the block's 8 words).

  vnni     AVX-512 VNNI: one vpdpbusd per 64 weight bytes (16 output rows x 4 k)
  avx512   AVX-512BW without VNNI: vpmaddubsw + vpmaddwd (q8: the signs moved onto the weights
           with vpsignb); q4 adds the vpmaddubsw pairs of a whole block in int16 (exact:
           8 * 2 * 15 * 127 < 2^15) and widens them with one vpmaddwd per block
  avx2     AVX2: the same on 256-bit halves
  sdot     AArch64 with the dot product extension: four sdot per 64 bytes, the activation word
           taken by index from a vector of 4 (no broadcast)
  smull    AArch64 NEON: per 16 bytes smull, smull2, addp (exact: a pair of byte products fits
           int16) and a pairwise widening add
  generic  any LLVM target: widening multiplies (slow)
All paths give the same integers.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from tvm.script import tirx as T
from tvm.target import Target, codegen

from .common import TILE


class DotOps(NamedTuple):
    """How one path sums a block: dot[r] (lanes values of dtype) starts at zero, add(dot, w, r,
    xq, row, first, j) returns it plus one weight operand's products, total(dot, r) is the
    block's int32x16 sums."""
    dtype: str
    lanes: int
    add: Callable
    total: Callable


class DotPath(NamedTuple):
    rows: int  # activation rows per group: accumulators and weight operands fit the register file
    signed: bool  # weights as signed bytes (q8 used as q, not q + 128)
    ops: Callable[[bool], DotOps]  # q4 -> the block sum's operations


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
    if has("neon"):
        return "smull"
    return "generic"


def _vnni_dot4(dot, w, r, xq, row, first, j):
    """AVX-512 VNNI: one vpdpbusd (unsigned weight bytes x signed activation bytes)."""
    word = xq[row, first + j]
    return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", dot[r, T.ramp(0, 1, TILE)],
                                   T.reinterpret("int8x64", w[T.ramp(0, 1, 64)]),
                                   T.reinterpret("int8x64", T.Broadcast(word, TILE)))


def _int32_ops(dot4) -> DotOps:
    return DotOps("int32", TILE, dot4, lambda dot, r: dot[r, T.ramp(0, 1, TILE)])


def _maddubs_ops(width: int, q4: bool) -> DotOps:
    """AVX2 / AVX-512BW: pmaddubsw (u8 x s8 pairs -> i16) then pmaddwd by ones (pairs -> i32).

    pmaddubsw takes unsigned first operands and saturates pairs at int16. q4 weights (0..15) go
    first as they are (a pair is at most 2 * 15 * 127, a block's 8 operands at most 30480, so
    the pairs add up in int16 and pmaddwd runs once per block); for q8 (w holds q, signed) the
    operands are |x| and q with the sign of x (psignb), so a pair is at most 2 * 127 * 127 and
    each is widened at once."""
    pmaddubs, pmaddwd, psign = {
        32: ("llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd", "llvm.x86.avx2.psign.b"),
        64: ("llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512", None)}[width]
    halves = range(64 // width)

    def activation(xq, row, first, j):
        return T.reinterpret(f"int8x{width}", T.Broadcast(xq[row, first + j], width // 4))

    def weight(w, h):
        return T.reinterpret(f"int8x{width}", w[T.ramp(h * width, 1, width)])

    def widen(pairs):
        return T.call_llvm_pure_intrin(f"int32x{width // 4}", pmaddwd, pairs, T.Broadcast(T.int16(1), width // 2))

    def signed_by(q, x):  # q * sign(x); AVX-512BW has no vpsignb
        if psign:
            return T.call_llvm_pure_intrin(f"int8x{width}", psign, q, x)
        zero = T.Broadcast(T.int8(0), width)
        return T.Select(x < zero, zero - q, q)

    if q4:
        def add16(dot, w, r, xq, row, first, j):
            x = activation(xq, row, first, j)
            return dot[r, T.ramp(0, 1, 2 * TILE)] + _concat(
                [T.call_llvm_pure_intrin(f"int16x{width // 2}", pmaddubs, weight(w, h), x) for h in halves], 2 * TILE)

        def total16(dot, r):
            return _concat([widen(dot[r, T.ramp(h * width // 2, 1, width // 2)]) for h in halves])

        return DotOps("int16", 2 * TILE, add16, total16)

    def dot4(dot, w, r, xq, row, first, j):
        x = activation(xq, row, first, j)
        return dot[r, T.ramp(0, 1, TILE)] + _concat(
            [widen(T.call_llvm_pure_intrin(f"int16x{width // 2}", pmaddubs, T.abs(x), signed_by(weight(w, h), x)))
             for h in halves])

    return _int32_ops(dot4)


def _sdot_dot4(dot, w, r, xq, row, first, j):
    """AArch64 dot product extension: four sdot (signed x signed, 4 lanes each); the word is a
    lane of a 4-word load, which LLVM turns into sdot's by-element form."""
    words = xq[row, T.ramp(first + j // 4 * 4, 1, 4)]
    x = T.reinterpret("int8x16", T.Shuffle([words], [T.int32(j % 4)] * 4))
    return _concat([T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot", dot[r, T.ramp(h * 4, 1, 4)],
                                            T.reinterpret("int8x16", w[T.ramp(h * 16, 1, 16)]), x)
                    for h in range(4)])


def _smull_dot4(dot, w, r, xq, row, first, j):
    """AArch64 NEON without dotprod: per 16 weight bytes (4 rows x 4 k) the byte products of the
    low and high halves (smull, smull2), their pairs summed (addp: at most 2 * 127 * 127, no
    overflow) and the two pairs of each row widened and summed (saddlp)."""
    x = T.reinterpret("int8x8", T.Broadcast(xq[row, first + j], 2))
    parts = []
    for h in range(4):
        products = [T.call_llvm_pure_intrin("int16x8", "llvm.aarch64.neon.smull.v8i16",
                                            T.reinterpret("int8x8", w[T.ramp(h * 16 + half * 8, 1, 8)]), x)
                    for half in range(2)]
        pairs = T.call_llvm_pure_intrin("int16x8", "llvm.aarch64.neon.addp.v8i16", *products)
        parts.append(T.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.saddlp.v4i32.v8i16", pairs))
    return dot[r, T.ramp(0, 1, TILE)] + _concat(parts)


def _generic_dot4(dot, w, r, xq, row, first, j):
    """Plain widening multiplies: any LLVM target (slow; the others are preferred)."""
    word = xq[row, first + j]
    total = dot[r, T.ramp(0, 1, TILE)]
    for c in range(4):
        total = total + T.Cast("int32x16", w[T.ramp(c, 4, TILE)]) \
            * T.Broadcast(T.shift_right(T.shift_left(word, 24 - 8 * c), 24), TILE)
    return total


def _concat(parts, lanes: int = TILE):
    """One vector of the `lanes` lanes of equal parts, in order."""
    if len(parts) == 1:
        return parts[0]
    return T.Shuffle(parts, [T.int32(i) for i in range(lanes)])


# Row counts: 32 zmm for AVX-512, 16 ymm for AVX2, 32 q registers for NEON (16 lanes take 4).
DOT_PATHS = {
    "vnni": DotPath(8, False, lambda q4: _int32_ops(_vnni_dot4)),
    "avx512": DotPath(8, True, lambda q4: _maddubs_ops(64, q4)),
    "avx2": DotPath(2, True, lambda q4: _maddubs_ops(32, q4)),
    "sdot": DotPath(3, True, lambda q4: _int32_ops(_sdot_dot4)),
    "smull": DotPath(3, True, lambda q4: _int32_ops(_smull_dot4)),
    "generic": DotPath(2, False, lambda q4: _int32_ops(_generic_dot4)),
}
