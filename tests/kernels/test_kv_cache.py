"""The KV-cache kernels (append with RoPE and quantization, attention with dequantization,
sinks + window, partial rotary with longrope's attention factor) against a numpy reference of
the same arithmetic."""

import numpy as np
import pytest
import tvm

from air.compiler import rope
from air.compiler.kernels import attention
from air.compiler.kv_layouts import KVLayout
from air.runtime.contract import KV_DTYPES
from air.compiler.spec import spec_from_config
from air.devices import host_device

SPEC = spec_from_config({"architectures": ["LlamaForCausalLM"], "vocab_size": 16, "hidden_size": 128,
                         "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "head_dim": 32}, "test")
# Phi-4-mini's rope: the first 24 of 32 dimensions rotated, cos and sin scaled by longrope's factor.
PARTIAL = spec_from_config({"architectures": ["Phi3ForCausalLM"], "vocab_size": 16, "hidden_size": 128,
                            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "partial_rotary_factor": 0.75, "max_position_embeddings": 512,
                            "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 12, "long_factor": [4.0] * 12,
                                             "original_max_position_embeddings": 32}}, "test")
LAYER = 1


def compile_kernels(layout, serial_appends=attention.SERIAL_APPENDS, serial_visits=attention.SERIAL_VISITS):
    mod = tvm.IRModule({
        "append": attention.append_kernel(layout, serial_appends).with_attr("global_symbol", "append"),
        "attend": attention.attention_kernel(layout, serial_visits).with_attr("global_symbol", "attend"),
    })
    return tvm.compile(mod, target=tvm.target.Target(host_device().tvm_target))


# -- numpy reference ------------------------------------------------------------------------

def inv_freq(dim):
    return (1.0 / (10000.0 ** (np.arange(0, dim, 2) / dim))).astype(np.float32)


def rotate(x, pos, freqs, magnitude=1.0):
    """The first 2 len(freqs) dimensions rotated (their halves paired), cos and sin times magnitude."""
    half = len(freqs)
    angle = np.float32(pos) * np.concatenate([freqs, freqs])
    turned = x[..., :2 * half]
    rotated = np.concatenate([-turned[..., half:], turned[..., :half]], axis=-1)
    turned = turned * np.cos(angle) * magnitude + rotated * np.sin(angle) * magnitude
    return np.concatenate([turned, x[..., 2 * half:]], axis=-1).astype(np.float32)


def quantize_roundtrip(row, kind):
    """What the cache gives back for `row` (one token and head)."""
    if kind == "f32":
        return row
    if kind == "f16":
        return row.astype(np.float16).astype(np.float32)
    if kind == "int8":
        scale = np.float32(np.float16(max(np.abs(row).max() / 127, 1e-6)))
        return np.clip(np.floor(row / scale + 0.5), -127, 127) * scale
    low = np.float32(np.float16(row.min()))
    scale = np.float32(np.float16(max((row.max() - low) / 15, 1e-6)))
    return np.clip(np.floor((row - low) / scale + 0.5), 0, 15) * scale + low


def reference_attention(q, keys, values, qpos, layout, freqs, magnitude=1.0):
    """keys/values: dict position -> [kv_heads, dim] as stored (rotated, round-tripped)."""
    group = SPEC.num_heads // SPEC.num_kv_heads
    out = np.zeros_like(q)
    sinks, window = layout.sinks, layout.window
    if layout.windowed:
        oldest = max(sinks, qpos - window + 1)
        visible = [(p, qpos - oldest + sinks) for p in range(min(sinks, qpos + 1))]
        visible += [(p, qpos) for p in range(oldest, qpos + 1)]
    else:
        visible = [(p, qpos) for p in range(qpos + 1)]
    for h in range(SPEC.num_heads):
        kh = h // group
        scores = np.array([rotate(q[h], rot_pos, freqs, magnitude) @ keys[p][kh]
                           for p, rot_pos in visible]) / np.sqrt(SPEC.head_dim)
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        out[h] = sum(w * values[p][kh] for w, (p, _) in zip(weights, visible))
    return out


@pytest.mark.parametrize("kind", KV_DTYPES)
@pytest.mark.parametrize("windowed", [False, True])
def test_append_and_attend_match_numpy(kind, windowed):
    check_against_numpy(SPEC, kind, windowed)


@pytest.mark.parametrize("kind, windowed", [(kind, False) for kind in KV_DTYPES] + [("int8", True)])
def test_partial_rotary_with_attention_factor_matches_numpy(kind, windowed):
    check_against_numpy(PARTIAL, kind, windowed)


def check_against_numpy(spec, kind, windowed):
    """spec: SPEC's shapes, its own rotary_dim and rope magnitude."""
    layout = KVLayout(spec, kind, max_context=128, sinks=3 if windowed else 0, window=20 if windowed else 0, slack=8)
    lib = compile_kernels(layout)
    dev = tvm.cpu()
    rng = np.random.default_rng(1)
    freqs = inv_freq(spec.rotary_dim)
    magnitude = rope.magnitude(spec)
    capacity = layout.fixed_capacity or 128
    caches = [tvm.runtime.tensor(np.zeros(shape, dtype), dev) for shape, dtype in layout.tensor_shapes(capacity)]
    keys, values = {}, {}
    length = 0
    chunks = [5, 1, 8, 1, 1, 7, 8, 3, 8, 8, 1, 6] if windowed else [5, 1, 8, 1, 7]
    for n in chunks:  # windowed: 58 positions through a 3 + 28 slot cache
        k = rng.normal(0, 1, (n, SPEC.num_kv_heads, SPEC.head_dim)).astype(np.float32)
        v = rng.normal(0, 1, (n, SPEC.num_kv_heads, SPEC.head_dim)).astype(np.float32)
        q = rng.normal(0, 1, (n, SPEC.num_heads, SPEC.head_dim)).astype(np.float32)
        start = tvm.runtime.tensor(np.array([length], dtype=np.int64), dev)
        qkv = tvm.runtime.tensor(np.concatenate([q, k, v], axis=1), dev)  # as the fused projection writes it
        lib["append"](qkv, tvm.runtime.tensor(freqs, dev), *caches, start, LAYER)
        out = tvm.runtime.tensor(np.zeros_like(q), dev)
        lib["attend"](qkv, tvm.runtime.tensor(freqs, dev), *caches, start, LAYER, out)
        for t in range(n):
            pos = length + t
            keys[pos] = np.stack([quantize_roundtrip(rotate(k[t, h], pos, freqs, magnitude), kind)
                                  for h in range(SPEC.num_kv_heads)])
            values[pos] = np.stack([quantize_roundtrip(v[t, h], kind) for h in range(SPEC.num_kv_heads)])
        for t in range(n):
            expected = reference_attention(q[t], keys, values, length + t, layout, freqs, magnitude)
            np.testing.assert_allclose(out.numpy()[t], expected, atol=2e-4, rtol=2e-4)
        length += n


def run_sequence(lib, layout, chunks, seed=3):
    """Append and attend chunk after chunk of random tokens; every chunk's attention output."""
    dev = tvm.cpu()
    rng = np.random.default_rng(seed)
    freqs = tvm.runtime.tensor(inv_freq(SPEC.head_dim), dev)
    caches = [tvm.runtime.tensor(np.zeros(shape, dtype), dev)
              for shape, dtype in layout.tensor_shapes(layout.fixed_capacity or 128)]
    outputs, length = [], 0
    for n in chunks:
        qkv = tvm.runtime.tensor(rng.normal(0, 1, (n, SPEC.num_heads + 2 * SPEC.num_kv_heads, SPEC.head_dim))
                                 .astype(np.float32), dev)
        start = tvm.runtime.tensor(np.array([length], dtype=np.int64), dev)
        lib["append"](qkv, freqs, *caches, start, LAYER)
        out = tvm.runtime.empty((n, SPEC.num_heads, SPEC.head_dim), "float32", dev)
        lib["attend"](qkv, freqs, *caches, start, LAYER, out)
        outputs.append(out.numpy())
        length += n
    return outputs


@pytest.mark.parametrize("kind", ["f32", "int4"])
@pytest.mark.parametrize("windowed", [False, True])
def test_parallel_kernels_match_the_serial_ones(kind, windowed):
    """Small calls run on the calling thread (below SERIAL_APPENDS / SERIAL_VISITS): forced onto
    the parallel branch, the same calls give the same bits."""
    layout = KVLayout(SPEC, kind, max_context=128, sinks=3 if windowed else 0, window=20 if windowed else 0, slack=8)
    chunks = [5, 1, 8, 8, 8, 8, 8, 1, 6]  # windowed: 53 positions through a 3 + 28 slot cache
    serial = run_sequence(compile_kernels(layout), layout, chunks)
    parallel = run_sequence(compile_kernels(layout, serial_appends=0, serial_visits=0), layout, chunks)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind, ratio", [("f32", 2.0), ("int8", (32 + 2) / 64), ("int4", (16 + 4) / 64)])
def test_bytes_per_token_against_f16(kind, ratio):
    """head_dim 32: int8 stores 32 bytes + a 2-byte scale, int4 16 bytes + scale and minimum."""
    f16 = KVLayout(SPEC, "f16", 128).cache_spec().bytes_per_token
    assert f16 == SPEC.num_layers * 2 * SPEC.num_kv_heads * SPEC.head_dim * 2
    assert KVLayout(SPEC, kind, 128).cache_spec().bytes_per_token / f16 == pytest.approx(ratio)
