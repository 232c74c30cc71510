"""Rotary position embedding: the frequency tables, computed once at build time.

The rotation itself is applied inside the KV-cache kernels (kernels/attention.py), on the
first spec.rotary_dim dimensions of each head (all of them unless partial_rotary_factor < 1).

Longrope (Phi-3, Phi-4-mini): the logits at sequence length L are those of all L positions
rotated with the short factors when L <= original_max_position_embeddings, else with the long
factors (transformers picks the factors from a forward pass's last position, and Phi-3's
generate() recomputes its cache once when the sequence first grows past that length). The
bundle stores both tables; the runtime recomputes the cache from its tokens whenever a call's
rows need the other table (runtime/model.py)."""

from __future__ import annotations

import math

import numpy as np

from .spec import DecoderSpec

LONG_TABLE = "rope_inv_freq_long"  # the weights file's long-factor table (not a parameter)


def inverse_frequencies(spec: DecoderSpec, long: bool = False, sliding: bool = False) -> np.ndarray:
    """The per-pair rotation frequencies, with linear, llama3 or longrope scaling when the checkpoint
    asks; `long`: longrope's long factors; `sliding`: those of the sliding layers (their own base,
    never scaled)."""
    dim = spec.rotary_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    theta = spec.rope_local_theta if sliding else spec.rope_theta
    powers = np.float32(theta) ** exponents
    scaling = None if sliding else spec.rope_scaling
    if scaling is not None and scaling["rope_type"] == "longrope":
        factors = np.asarray(scaling["long_factor" if long else "short_factor"], dtype=np.float32)
        return (1.0 / (factors * powers)).astype(np.float32)
    inv_freq = (1.0 / powers).astype(np.float32)
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


def magnitude(spec: DecoderSpec) -> float:
    """What cos and sin are multiplied by (longrope's attention factor; 1 otherwise)."""
    scaling = spec.rope_scaling
    return scaling["attention_factor"] if scaling is not None and scaling["rope_type"] == "longrope" else 1.0


def rope_switch(spec: DecoderSpec, context: int) -> dict | None:
    """The manifest's longrope entry, when a sequence of this bundle can outgrow the short factors."""
    scaling = spec.rope_scaling
    if scaling is None or scaling["rope_type"] != "longrope":
        return None
    after = scaling["original_max_position_embeddings"]
    return {"after": after, "param": "rope_inv_freq", "long": LONG_TABLE} if context > after else None
