"""KV layouts end to end: accounting in the manifest, the memory refusal, generation past
the window in fixed memory, quantized caches close to the f32 one."""

import json

import numpy as np
import pytest

from checkpoints import make_checkpoint

from air.compiler.build import compile_bundle
from air.compiler.recipe import load_recipe
from air.runtime import Bundle
from helpers import air_run


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv")
    checkpoint = make_checkpoint(root / "ckpt", "qwen2", hidden=128, heads=4, kv_heads=2, intermediate=256,
                                 tied=True, seed=5)
    base = load_recipe("host").with_overrides(max_context=2048)
    bundles = {}
    for name, changes in {"f32": {}, "f16": {"kv_cache": "f16"}, "int8": {"kv_cache": "int8"},
                          "int4": {"kv_cache": "int4"},
                          "window": {"kv_cache": "int8", "kv_window": 48, "kv_sinks": 4}}.items():
        compile_bundle(str(checkpoint), None, base.with_overrides(**changes), root / name, quiet=True)
        bundles[name] = root / name
    return bundles



def test_manifest_states_kv_bytes(layouts):
    kv = {name: json.loads((path / "manifest.json").read_text())["models"]["target"]["kv_cache"]
          for name, path in layouts.items()}
    per_head = {"f32": 32 * 4, "f16": 32 * 2, "int8": 32 + 2, "int4": 16 + 4}  # head_dim 32
    for name, size in per_head.items():
        assert kv[name]["bytes_per_token"] == 2 * 2 * 2 * size  # layers, k+v, kv heads
        assert kv[name]["max_bytes"] == kv[name]["bytes_per_token"] * 512  # the checkpoint's max positions
    window, (group,) = kv["window"], kv["window"]["groups"]
    assert group["kind"] == "windowed" and group["fixed_capacity"] == 4 + 48 + group["max_append"]
    assert window["max_bytes"] == window["bytes_per_token"] * group["fixed_capacity"]


def test_memory_budget_refuses_what_does_not_fit(layouts):
    f32, int8 = Bundle.load(layouts["f32"]), Bundle.load(layouts["int8"])
    long_f32, long_int8 = f32.memory_needed(500), int8.memory_needed(500)
    short_f32 = f32.memory_needed(20)
    weights = f32.manifest["models"]["target"]["weight_bytes"]
    assert long_f32["total"] == weights + 512 * f32.target.kv.bytes_per_token  # 500 rounds up to 512 slots
    assert short_f32["total"] == weights + 256 * f32.target.kv.bytes_per_token
    assert long_int8["total"] < short_f32["total"] < long_f32["total"]
    budget = f"{(short_f32['total'] + long_f32['total']) / 2 / 2**20:.4f}"  # MiB

    ids = ",".join(["7"] * 400)
    refused = air_run(layouts["f32"], "--prompt-ids", ids, "--max-tokens", "99", "--memory-budget", budget)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "request needs" in refused.stderr and "memory budget is" in refused.stderr
    # the same request fits with the int8 cache, and a short one fits with f32
    assert air_run(layouts["int8"], "--prompt-ids", ids, "--max-tokens", "99", "--memory-budget", budget).returncode == 0
    assert air_run(layouts["f32"], "--prompt-ids", "7,7,7", "--max-tokens", "8", "--memory-budget", budget).returncode == 0


def test_generation_runs_past_the_window_in_fixed_memory(layouts):
    bundle = Bundle.load(layouts["window"])
    bundle.eos_token_ids = set()
    result = bundle.generate(prompt_ids=[5, 6, 7], max_tokens=300)
    assert result.finish_reason == "length" and len(result.tokens) == 300
    assert bundle.target.capacities == (bundle.target.kv.groups[0].fixed_capacity,)
    assert bundle.target.length > bundle.target.capacities[0]
    # a prompt longer than the window is streamed through it too
    long = bundle.generate(prompt_ids=[int(x) for x in np.arange(400) % 300 + 2], max_tokens=20)
    assert len(long.tokens) == 20


def test_window_is_exact_until_it_fills(layouts):
    ids = [int(x) for x in np.random.default_rng(3).integers(2, 300, size=40)]
    dense = Bundle.load(layouts["int8"]).target
    windowed = Bundle.load(layouts["window"]).target
    dense.reset()
    windowed.reset()
    np.testing.assert_allclose(windowed.prefill(ids), dense.prefill(ids), atol=1e-4)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("name, max_kl", [("f16", 1e-6), ("int8", 1e-3), ("int4", 5e-2)])
def test_quantized_caches_stay_close_to_f32(layouts, name, max_kl):
    ids = [int(x) for x in np.random.default_rng(4).integers(2, 300, size=60)]
    reference = Bundle.load(layouts["f32"]).target
    model = Bundle.load(layouts[name]).target
    reference.reset()
    model.reset()
    p, q = _softmax(reference.verify(ids)), _softmax(model.verify(ids))
    kl = float((p * (np.log(p) - np.log(q))).sum(axis=-1).mean())
    assert kl < max_kl
