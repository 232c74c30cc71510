"""Phi-3 and Phi-4-mini (Phi3ForCausalLM) against transformers: fused checkpoint tensors,
partial rotary, longrope across its switch from the short to the long factors, in both roles,
in every weight format and the f32, int8 and int4 KV caches (f16: tests/kernels/test_kv_cache.py).

Three bundles: f32 (target Phi-4-mini, draft Phi-3: both checked against transformers), q8/q4
with an int8 cache and f16 with an int4 cache (the same models with the roles swapped, each
checked against its f32 twin)."""

import functools
import subprocess
import sys

import numpy as np
import pytest
import torch

from checkpoints import PHI3_VARIANTS, load_reference, make_checkpoint

from air.compiler.build import compile_bundle
from air.compiler.recipe import load_recipe
from air.compiler.spec import spec_from_config
from air.errors import AirError
from air.runtime import Bundle

SWITCH = PHI3_VARIANTS["phi4-mini"]["original_max_position_embeddings"]  # 32
IDS = [int(x) for x in np.random.default_rng(5).integers(2, 300, size=48)]  # runs past the switch
PROMPT = IDS[:11]
TOL = 2e-4  # as tests/compiler/test_numerics.py

BUNDLES = {  # name: (target, draft, weight formats (target, draft), KV cache)
    "f32": ("phi4-mini", "phi3", ("f32", "f32"), "f32"),
    "packed": ("phi3", "phi4-mini", ("q8", "q4"), "int8"),
    "half": ("phi4-mini", None, ("f16", None), "int4"),
}


@pytest.fixture(scope="module")
def phi3_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("phi3-checkpoints")
    return {name: make_checkpoint(root / name, seed=40 + i, **kwargs)
            for i, (name, kwargs) in enumerate(PHI3_VARIANTS.items())}


@pytest.fixture(scope="module")
def phi3(phi3_checkpoints, tmp_path_factory):
    """The checkpoints, and bundle(name): BUNDLES[name], compiled when a test first asks for it."""
    root = tmp_path_factory.mktemp("phi3")

    @functools.cache
    def bundle(name: str) -> Bundle:
        target, draft, (scheme, draft_scheme), kv = BUNDLES[name]
        recipe = load_recipe("host").with_overrides(max_context=128, quantization=scheme,
                                                    draft_quantization=draft_scheme, kv_cache=kv)
        compile_bundle(str(phi3_checkpoints[target]), draft and str(phi3_checkpoints[draft]), recipe, root / name,
                       quiet=True)
        return Bundle.load(root / name)

    return {"checkpoints": phi3_checkpoints, "bundle": bundle}


def _model(phi3, bundle: str, family: str):
    """The compiled model of `family` in `bundle` (whichever role it has there)."""
    target, draft, _, _ = BUNDLES[bundle]
    loaded = phi3["bundle"](bundle)
    return loaded.target if family == target else loaded.draft


def _expected_logits(checkpoint, ids):
    """transformers' logits for each prefix of ids: a forward pass rotates all its positions with
    the factors its last position needs, so the rows up to the switch come from a pass over them."""
    reference = load_reference(checkpoint)
    with torch.no_grad():
        logits = reference(torch.tensor([ids])).logits[0].numpy()
        if reference.config.rope_parameters["rope_type"] == "longrope":
            logits[:SWITCH] = reference(torch.tensor([ids[:SWITCH]])).logits[0].numpy()
    return logits


@pytest.mark.parametrize("family", list(PHI3_VARIANTS))
def test_prefill_decode_verify_match_transformers(phi3, family):
    expected = _expected_logits(phi3["checkpoints"][family], IDS)
    model = _model(phi3, "f32", family)

    model.reset()  # prefill short of the switch, decode across it
    np.testing.assert_allclose(model.prefill(IDS[:20]), expected[19], atol=TOL, rtol=0)
    for i in range(20, len(IDS)):
        np.testing.assert_allclose(model.decode(IDS[i]), expected[i], atol=TOL, rtol=0)

    model.reset()  # one verify over rows on both sides of the switch
    np.testing.assert_allclose(model.verify(IDS), expected, atol=TOL, rtol=0)

    model.reset()  # a prompt past the switch
    np.testing.assert_allclose(model.prefill(IDS[:40], chunk=16), expected[39], atol=TOL, rtol=0)

    model.reset()  # across the switch and back by a rollback, as speculation does
    model.prefill(IDS[:30])
    np.testing.assert_allclose(model.verify(IDS[30:36]), expected[30:36], atol=TOL, rtol=0)
    model.rollback(31)
    np.testing.assert_allclose(model.decode(IDS[31]), expected[31], atol=TOL, rtol=0)
    np.testing.assert_allclose(model.verify(IDS[32:40]), expected[32:40], atol=TOL, rtol=0)


def _transformers_greedy(checkpoint, prompt, count):
    reference = load_reference(checkpoint)
    reference.generation_config.eos_token_id = None  # run the full count, as ours does below
    with torch.no_grad():
        return reference.generate(torch.tensor([prompt]), max_new_tokens=count, min_new_tokens=count,
                                  do_sample=False)[0, len(prompt):].tolist()


def _greedy(model, prompt, count):
    model.reset()
    tokens = [int(np.argmax(model.prefill(prompt)))]
    while len(tokens) < count:
        tokens.append(int(np.argmax(model.decode(tokens[-1]))))
    return tokens


def test_greedy_generation_is_token_identical_across_the_switch(phi3):
    """transformers' generate() recomputes its cache at the switch (33 positions); so do we."""
    count = 40
    bundle = phi3["bundle"]("f32")
    bundle.eos_token_ids = set()
    expected = _transformers_greedy(phi3["checkpoints"]["phi4-mini"], PROMPT, count)
    assert bundle.generate(prompt_ids=PROMPT, max_tokens=count, speculate=0).tokens == expected
    for k in (1, 3):  # Phi-3 drafting
        assert bundle.generate(prompt_ids=PROMPT, max_tokens=count, speculate=k).tokens == expected
    assert _greedy(bundle.draft, PROMPT, count) == _transformers_greedy(phi3["checkpoints"]["phi3"], PROMPT, count)


def test_speculation_with_a_longrope_draft_stays_exact(phi3):
    """Phi-4-mini (q4) drafts for Phi-3 (q8), both across the draft's switch."""
    bundle = phi3["bundle"]("packed")
    bundle.eos_token_ids = set()
    expected = bundle.generate(prompt_ids=PROMPT, max_tokens=40, speculate=0).tokens
    for k in (1, 4):
        assert bundle.generate(prompt_ids=PROMPT, max_tokens=40, speculate=k).tokens == expected
    assert _greedy(bundle.target, PROMPT, 40) == expected


def _distribution(model):
    model.reset()
    logits = model.verify(IDS).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return probs / probs.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("bundle, family, max_kl, min_top1", [
    ("packed", "phi3", 2e-3, 0.9), ("packed", "phi4-mini", 5e-2, 0.6), ("half", "phi4-mini", 5e-2, 0.6)])
def test_other_formats_track_f32(phi3, bundle, family, max_kl, min_top1):
    """q8 weights + int8 cache, q4 + int8, f16 + int4 against the f32 model, on rows across the switch
    (thresholds of test_quantization.py's weight formats: the cache's error is the smaller one)."""
    p, q = _distribution(_model(phi3, "f32", family)), _distribution(_model(phi3, bundle, family))
    kl = float((p * (np.log(p) - np.log(q))).sum(axis=-1).mean())
    top1 = float((p.argmax(-1) == q.argmax(-1)).mean())
    assert kl < max_kl and top1 >= min_top1, (kl, top1)


def test_manifest_names_the_switch_and_the_long_table(phi3):
    models = phi3["bundle"]("f32").manifest["models"]
    assert models["target"]["rope_switch"] == {"after": SWITCH, "param": "rope_inv_freq", "long": "rope_inv_freq_long"}
    assert "rope_switch" not in models["draft"]
    assert models["target"]["architecture"]["partial_rotary_factor"] == 0.75


def test_windowed_cache_is_refused_for_longrope(phi3_checkpoints, tmp_path):
    result = subprocess.run([sys.executable, "-m", "air.compiler", "compile", "--target-model",
                             str(phi3_checkpoints["phi4-mini"]), "--kv-window", "48", "--kv-sinks", "4",
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "longrope" in result.stderr and "windowed" in result.stderr
    assert not (tmp_path / "out").exists()


def _phi4_config(**changes):
    config = {"architectures": ["Phi3ForCausalLM"], "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 4096,
              "original_max_position_embeddings": 1024, "partial_rotary_factor": 0.75,
              "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 12, "long_factor": [2.0] * 12}}
    return {**config, **changes}


def test_config_in_the_older_layout_reads_as_longrope():
    """Top-level partial_rotary_factor and original_max_position_embeddings, rope_scaling "type";
    transformers masks Phi-3's sliding_window (the build limits the context to it, as for Mistral)."""
    spec = spec_from_config(_phi4_config(sliding_window=2047), "phi4")
    assert spec.rotary_dim == 24 and spec.rope_scaling["original_max_position_embeddings"] == 1024
    assert spec.sliding_window == 2047
    assert spec.rope_scaling["attention_factor"] == pytest.approx(np.sqrt(1 + np.log(4) / np.log(1024)))


@pytest.mark.parametrize("changes, message", [
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 16, "long_factor": [2.0] * 12}},
     "short_factor has 16 values"),
    ({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 12}}, "'long_factor'"),
    ({"partial_rotary_factor": 1.5}, "partial_rotary_factor"),
    ({"architectures": ["LlamaForCausalLM"], "rope_scaling": None}, "partial_rotary_factor"),
])
def test_bad_rope_settings_are_refused(changes, message):
    with pytest.raises(AirError, match=message):
        spec_from_config(_phi4_config(**changes), "phi4")
