import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import CHAT_TEMPLATE, make_checkpoint  # noqa: E402

from air.compiler.build import compile_bundle  # noqa: E402
from air.compiler.recipe import load_recipe  # noqa: E402

# TVM sizes its thread pool once per process, at first use, and caps later sizes at that: room for
# two threads on any machine, so the tests that switch between one and two (test_threads.py) can.
os.environ.setdefault("TVM_NUM_THREADS", "2")

# Every supported family with the flags that set it apart.
VARIANTS = {
    "llama-llama3rope-f16": dict(family="llama", dtype="float16",
                                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "llama-bias-tied": dict(family="llama", tied=True, attention_bias=True, kv_heads=4),
    "qwen2-tied-bf16": dict(family="qwen2", tied=True, dtype="bfloat16", rope_theta=1000000.0),
    "qwen3-qknorm": dict(family="qwen3", head_dim=32),
    # deeper than pipeline.COMPILED_GLUE_MAX_LAYERS: its Relax functions run as VM bytecode
    "mistral-gqa-deep": dict(family="mistral", layers=10, heads=4, kv_heads=1, sliding_window=4096),
    # five sliding layers and one full (Gemma 3's pattern), a window far below the tests' lengths
    "gemma3-softcap": dict(family="gemma3", layers=6, head_dim=16, tied=True, sliding_window=8,
                           query_pre_attn_scalar=24, final_logit_softcapping=8.0),
}


@pytest.fixture(scope="session", autouse=True)
def verification_cache(tmp_path_factory):
    """Bundle verifications are remembered in a folder of the session, not in the home folder."""
    os.environ["AIR_VERIFIED_CACHE"] = str(tmp_path_factory.mktemp("verified-cache"))


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """Parsed kernels are shared by the session's builds and subprocesses, never read from the home folder."""
    os.environ["AIR_KERNEL_CACHE"] = str(tmp_path_factory.mktemp("kernel-cache"))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_checkpoint(root / name, seed=i, **kwargs) for i, (name, kwargs) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="session")
def bundles(checkpoints, tmp_path_factory):
    """One compiled bundle per variant (target only), built once for the session."""
    root = tmp_path_factory.mktemp("bundles")
    recipe = load_recipe("host").with_overrides(max_context=256)
    built = {}
    for name, path in checkpoints.items():
        compile_bundle(str(path), None, recipe, root / name, quiet=True)
        built[name] = root / name
    return built


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
    """A target/draft pair with one tokenizer and a chat template, compiled together."""
    root = tmp_path_factory.mktemp("pair")
    target = make_checkpoint(root / "target", "llama", seed=11, chat_template=CHAT_TEMPLATE)
    draft = make_checkpoint(root / "draft", "qwen2", hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, seed=12)
    bundle = root / "bundle"
    compile_bundle(str(target), str(draft), load_recipe("host").with_overrides(max_context=128), bundle, quiet=True)
    return {"target": target, "draft": draft, "bundle": bundle}


@pytest.fixture(scope="session")
def windowed_chat(pair, tmp_path_factory):
    """The pair's target alone with a windowed cache (4 sinks + 48 recent positions): its
    generation runs past the context in fixed memory."""
    bundle = tmp_path_factory.mktemp("windowed") / "bundle"
    recipe = load_recipe("host").with_overrides(max_context=128, kv_window=48, kv_sinks=4)
    compile_bundle(str(pair["target"]), None, recipe, bundle, quiet=True)
    return bundle

