"""Rotary position embedding: the frequency table (computed once, at build time) and its kernel."""

from __future__ import annotations

import math

import numpy as np
from tvm.script import tirx as T

from .spec import DecoderSpec


def inverse_frequencies(spec: DecoderSpec) -> np.ndarray:
    """The per-pair rotation frequencies, with llama3 scaling applied when the checkpoint asks."""
    dim = spec.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(spec.rope_theta) ** exponents)).astype(np.float32)
    scaling = spec.rope_scaling
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_kernel(num_heads: int, head_dim: int):
    """x[t, h, :] rotated by angle (start_pos + t) * inv_freq, in the rotate-half convention."""
    half = head_dim // 2

    @T.prim_func(private=True, s_tir=True)
    def rope(var_x: T.handle, inv_freq: T.Buffer((half,), "float32"), start_pos: T.int64, var_out: T.handle):
        T.func_attr({"op_pattern": 8})  # opaque: hand-written, never fused
        n = T.int64()
        x = T.match_buffer(var_x, (n, num_heads, head_dim), "float32")
        out = T.match_buffer(var_out, (n, num_heads, head_dim), "float32")
        for t, h, d in T.grid(n, num_heads, head_dim):
            with T.sblock("rope"):
                vt, vh, vd = T.axis.remap("SSS", [t, h, d])
                angle: T.let[T.float32] = T.Cast("float32", start_pos + vt) * inv_freq[vd % half]
                partner: T.let[T.float32] = T.if_then_else(
                    vd < half, -x[vt, vh, vd + half], x[vt, vh, vd - half]
                )
                out[vt, vh, vd] = x[vt, vh, vd] * T.cos(angle) + partner * T.sin(angle)

    return rope
