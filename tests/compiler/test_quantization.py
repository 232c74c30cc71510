"""Weight formats end to end: f16/q8/q4 bundles against the f32 bundle of the same checkpoint,
the packed embedding lookup, speculation on quantized models, bad shapes."""

import subprocess
import sys

import numpy as np
import pytest
import tvm

from checkpoints import make_checkpoint

from air.compiler.kernels import packing
from air.compiler.build import compile_bundle
from air.compiler.kernels.embedding import packed_lookup_kernel
from air.compiler.recipe import load_recipe
from air.runtime import Bundle
from air.devices import host_device

IDS = [int(x) for x in np.random.default_rng(0).integers(2, 300, size=48)]


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    checkpoints = {"untied": make_checkpoint(root / "untied", "llama", seed=7),
                   "tied": make_checkpoint(root / "tied", "qwen2", tied=True, seed=8)}
    bundles = {}
    for kind, checkpoint in checkpoints.items():
        for scheme in ("f32", "f16", "q8", "q4"):
            recipe = load_recipe("host").with_overrides(max_context=128, quantization=scheme)
            compile_bundle(str(checkpoint), None, recipe, root / f"{kind}-{scheme}", quiet=True)
            bundles[kind, scheme] = Bundle.load(root / f"{kind}-{scheme}")
    recipe = load_recipe("host").with_overrides(max_context=128, quantization="q4", head_quantization="q4")
    compile_bundle(str(checkpoints["tied"]), None, recipe, root / "tied-q4-head-q4", quiet=True)
    bundles["tied", "q4 head q4"] = Bundle.load(root / "tied-q4-head-q4")
    return bundles


def _distribution(bundle):
    model = bundle.target
    model.reset()
    logits = model.verify(IDS).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return probs / probs.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("kind", ["untied", "tied"])
@pytest.mark.parametrize("scheme, max_kl, min_top1, max_bytes", [
    ("f16", 1e-5, 1.0, 0.51), ("q8", 2e-3, 0.9, 0.30), ("q4", 5e-2, 0.6, 0.21)])  # q4: its token table and head are q8
def test_quantized_models_track_f32(formats, kind, scheme, max_kl, min_top1, max_bytes):
    p, q = _distribution(formats[kind, "f32"]), _distribution(formats[kind, scheme])
    kl = _kl(p, q)
    top1 = float((p.argmax(-1) == q.argmax(-1)).mean())
    assert kl < max_kl and top1 >= min_top1, (kl, top1)
    ratio = formats[kind, scheme].manifest["models"]["target"]["weight_bytes"] / \
        formats[kind, "f32"].manifest["models"]["target"]["weight_bytes"]
    assert ratio < max_bytes


def _kl(p, q) -> float:
    return float((p * (np.log(p) - np.log(q))).sum(axis=-1).mean())


def test_q4_keeps_its_token_table_and_head_at_q8(formats):
    """The default head of a q4 target is q8 (the recipe's head_format); head_quantization q4
    stores it in q4, smaller and further from f32."""
    from air.compiler.kernels.layout import PackedLayout

    default, small = formats["tied", "q4"], formats["tied", "q4 head q4"]
    entries = [bundle.manifest["models"]["target"] for bundle in (default, small)]
    assert [(e["quantization"], e["head_quantization"]) for e in entries] == [("q4", "q8"), ("q4", "q4")]
    arch = entries[0]["architecture"]
    for bundle, entry, scheme in ((default, entries[0], "q8"), (small, entries[1], "q4")):
        table = dict(zip(entry["params"], bundle.target.params))["model.embed_tokens.qs"]
        assert tuple(table.shape) == PackedLayout(scheme, arch["vocab_size"], arch["hidden_size"]).shapes[0]
    assert entries[1]["weight_bytes"] < entries[0]["weight_bytes"]
    p = _distribution(formats["tied", "f32"])
    assert _kl(p, _distribution(default)) < _kl(p, _distribution(small))


def test_tied_table_is_stored_once(formats):
    params = formats["tied", "q4"].manifest["models"]["target"]["params"]
    assert "model.embed_tokens.qs" in params and not any(p.startswith("lm_head") for p in params)


@pytest.mark.parametrize("scheme", ["q8", "q4"])
def test_packed_embedding_lookup_matches_dequantize(scheme):
    vocab, width = 40, 96
    table = np.random.default_rng(1).normal(0, 1, (vocab, width)).astype(np.float32)
    packed = packing.pack(table, scheme)
    kernel = packed_lookup_kernel(scheme, vocab, width).with_attr("global_symbol", "embed")
    lib = tvm.compile(tvm.IRModule({"embed": kernel}), target=tvm.target.Target(host_device().tvm_target))
    tokens = np.array([0, 17, 39, 16, 15], dtype=np.int32)
    out = tvm.runtime.tensor(np.zeros((len(tokens), width), np.float32))
    lib["embed"](tvm.runtime.tensor(tokens), tvm.runtime.tensor(packed["qs"]), tvm.runtime.tensor(packed["scales"]), out)
    expected = packing.dequantize(packed, scheme, vocab, width)[tokens]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_speculation_on_quantized_models_stays_exact(tmp_path):
    """A q4 target with a draft in its own format (q8), int8 KV: still the target's tokens."""
    target = make_checkpoint(tmp_path / "target", "llama", seed=9)
    draft = make_checkpoint(tmp_path / "draft", "llama", seed=10, layers=1)
    recipe = load_recipe("host").with_overrides(max_context=128, quantization="q4", draft_quantization="q8",
                                                kv_cache="int8")
    compile_bundle(str(target), str(draft), recipe, tmp_path / "bundle", quiet=True)
    bundle = Bundle.load(tmp_path / "bundle")
    models = bundle.manifest["models"]
    assert (models["target"]["quantization"], models["draft"]["quantization"]) == ("q4", "q8")
    assert "model.embed_tokens.qs" in models["draft"]["params"]
    bundle.eos_token_ids = set()
    expected = bundle.generate(prompt_ids=[5, 6, 7], max_tokens=30, speculate=0).tokens
    for k in (1, 4):
        assert bundle.generate(prompt_ids=[5, 6, 7], max_tokens=30, speculate=k).tokens == expected


def test_widths_that_are_not_multiples_of_32_are_refused(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "odd", "llama", intermediate=100)
    result = subprocess.run([sys.executable, "-m", "air.compiler", "compile", "--target-model", str(checkpoint),
                             "--quantization", "q4", "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "intermediate_size 100" in result.stderr and "multiples of 32" in result.stderr
    assert not (tmp_path / "out").exists()
