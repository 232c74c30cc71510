"""Gemma 3 (tiny random checkpoints from transformers): per-layer KV groups (five sliding layers
with a ring of their window, one full layer), both roles, the weight formats and KV dtypes.

The f32 target against transformers (logits, greedy tokens past the window) is the
"gemma3-softcap" variant of test_numerics.py; here: one bundle per setup (a target and a draft,
both Gemma 3, in the setup's formats), each checked several ways."""

import json

import numpy as np
import pytest
import torch

from checkpoints import load_reference, make_checkpoint
from conftest import VARIANTS
from helpers import run_module

from air.compiler.build import compile_bundle
from air.compiler.recipe import load_recipe
from air.compiler.spec import spec_from_config
from air.runtime import Bundle

IDS = [int(x) for x in np.random.default_rng(3).integers(2, 300, size=40)]  # five times the window
WINDOW = VARIANTS["gemma3-softcap"]["sliding_window"]
# Two layers (one sliding, one full), linear rope scaling on the full one, stored in f16.
DRAFT = dict(family="gemma3", hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, head_dim=16, tied=True,
             sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"], dtype="float16",
             rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
SETUPS = {  # name: recipe overrides
    "f16-q8-f16kv": dict(quantization="f16", draft_quantization="q8", kv_cache="f16"),
    "q4-q4-int8kv-window": dict(quantization="q4", draft_quantization="q4", kv_cache="int8", kv_window=24, kv_sinks=4),
    "q8-f32-int4kv": dict(quantization="q8", draft_quantization="f32", kv_cache="int4"),
}


@pytest.fixture(scope="module")
def gemma_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma3")
    target = make_checkpoint(root / "target", seed=21, **VARIANTS["gemma3-softcap"])
    return {"target": target, "draft": make_checkpoint(root / "draft", seed=22, **DRAFT)}


# The int4 setup is slow (a third pair of compiles; the int4 cache kernels are tested on their own).
@pytest.fixture(scope="module", params=[pytest.param(name, marks=pytest.mark.slow) if "int4" in name else name
                                        for name in SETUPS])
def gemma_bundle(request, gemma_checkpoints, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("gemma3-bundle") / request.param
    recipe = load_recipe("host").with_overrides(max_context=128, **SETUPS[request.param])
    compile_bundle(str(gemma_checkpoints["target"]), str(gemma_checkpoints["draft"]), recipe, bundle, quiet=True)
    return request.param, Bundle.load(bundle), bundle


def _probabilities(logits):
    logits = np.asarray(logits, dtype=np.float64)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def test_both_roles_track_transformers(gemma_bundle, gemma_checkpoints):
    """Prefill + decode and verify, well past the sliding window: close to transformers in every
    format, decode and verify agreeing."""
    name, bundle, _ = gemma_bundle
    for role in ("target", "draft"):
        with torch.no_grad():
            expected = load_reference(gemma_checkpoints[role])(torch.tensor([IDS])).logits[0].numpy()
        model = getattr(bundle, role)
        model.reset()
        stepped = np.stack([model.prefill(IDS[:6])] + [model.decode(t) for t in IDS[6:]])
        model.reset()
        verified = model.verify(IDS)
        np.testing.assert_allclose(stepped, verified[5:], atol=1e-4, rtol=0)
        # a windowed full layer (sinks + recent) departs from full attention once it evicts
        setup = SETUPS[name]
        end = setup["kv_window"] + setup["kv_sinks"] if "kv_window" in setup else len(IDS)
        p, q = _probabilities(expected[5:end]), _probabilities(stepped[:end - 5])
        kl = float((p * (np.log(p) - np.log(q))).sum(axis=-1).mean())
        top1 = float((p.argmax(-1) == q.argmax(-1)).mean())
        formats = bundle.manifest["models"][role]["quantization"], bundle.manifest["models"][role]["kv_cache"]["dtype"]
        exact = formats[0] in ("f32", "f16") and formats[1] in ("f32", "f16")
        # soft-capped logits of a tiny random model are close: q4's top-1 agreement was 0.57 (KL 0.03)
        assert kl < (1e-3 if exact else 1e-1) and top1 >= (0.95 if exact else 0.5), (role, formats, kl, top1)


def test_speculation_keeps_the_target_tokens_past_the_window(gemma_bundle):
    _, bundle, _ = gemma_bundle
    alone = bundle.generate(prompt_ids=IDS[:5], max_tokens=40, speculate=0)
    for k in (1, 4):
        assert bundle.generate(prompt_ids=IDS[:5], max_tokens=40, speculate=k).tokens == alone.tokens
    assert len(alone.tokens) > 3 * WINDOW or alone.finish_reason == "stop"


def test_manifest_accounts_each_layer_group(gemma_bundle):
    name, bundle, path = gemma_bundle
    entry = json.loads(run_module("air.compiler", "inspect", str(path), "--json").stdout)["models"]["target"]
    kv, setup = entry["kv_cache"], SETUPS[name]
    local, whole = kv["groups"]
    assert (local["layers"], local["kind"], local["sinks"], local["window"]) == ([0, 1, 2, 3, 4], "windowed", 0, WINDOW)
    assert whole["layers"] == [5]
    assert whole["kind"] == ("windowed" if setup.get("kv_window") else "dense")
    assert local["bytes_per_token"] == 5 * whole["bytes_per_token"]
    assert kv["max_context"] == 128  # the context is not cut to the sliding window
    # the five sliding layers hold a ring of their window at any context
    assert local["fixed_capacity"] == WINDOW + local["max_append"]


def test_gemma3_config_of_transformers_4():
    """A config.json as the hub's Gemma 3 checkpoints have it (sliding_window_pattern, rope_theta
    and rope_local_base_freq at the top, bf16): the same layer types and bases, and the embedding
    scale rounded to bf16 as transformers rounds it."""
    config = {"architectures": ["Gemma3ForCausalLM"], "vocab_size": 262144, "hidden_size": 1152,
              "intermediate_size": 6912, "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 1,
              "head_dim": 256, "query_pre_attn_scalar": 256, "rope_local_base_freq": 10000, "rope_theta": 1000000,
              "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
              "sliding_window_pattern": 6, "torch_dtype": "bfloat16", "hidden_activation": "gelu_pytorch_tanh"}
    spec = spec_from_config(config, "hub")
    assert [spec.sliding(i) for i in range(8)] == [True] * 5 + [False] + [True] * 2
    assert (spec.rope_theta, spec.rope_local_theta, spec.rope_scaling["factor"]) == (1e6, 1e4, 8.0)
    assert spec.embedding_scale == torch.tensor(1152 ** 0.5).to(torch.bfloat16).item() != 1152 ** 0.5
