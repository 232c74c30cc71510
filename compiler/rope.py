"""Rotary position embedding: the frequency table, computed once at build time.

The rotation itself is applied inside the KV-cache kernels (kv_layouts.py)."""

from __future__ import annotations

import math

import numpy as np

from .spec import DecoderSpec


def inverse_frequencies(spec: DecoderSpec, sliding: bool = False) -> np.ndarray:
    """The per-pair rotation frequencies, with linear or llama3 scaling applied when the checkpoint
    asks; `sliding`: those of the sliding layers (their own base, never scaled)."""
    dim = spec.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    theta = spec.rope_local_theta if sliding else spec.rope_theta
    inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    scaling = None if sliding else spec.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling["rope_type"] == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)
