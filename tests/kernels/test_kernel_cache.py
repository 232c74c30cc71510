"""The kernel cache (compiler/kernels/cache.py): what it loads is what the parser makes, what it
cannot trust it parses again, and a build from a warm cache is the build from a cold one."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import tvm
import tvm_ffi

from air.compiler.kernels import attention, cache, dense, embedding, norms, packed
from air.compiler.kv_layouts import KVLayout
from air.compiler.spec import spec_from_config
from air.runtime import Bundle
from air.runtime.contract import KV_DTYPES
from checkpoints import make_checkpoint
from helpers import cli_env, host_target, run_module

SPEC = spec_from_config({"architectures": ["LlamaForCausalLM"], "vocab_size": 40, "hidden_size": 64,
                         "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "head_dim": 16}, "test")
TARGET = host_target()

# Every kernel family with small shapes: (builder, arguments). Each case parses its kernel once
# (seconds each): the default run checks five of them, `-m slow` all.
FAMILIES = [
    (dense.matmul_kernel, (48, 64, "float16", TARGET)),
    (packed.quantize_kernel, (64,)),
    (packed.matmul_kernel, ("q8", 48, 64, TARGET)),
    (packed.matmul_kernel, ("q4", 48, 64, TARGET)),
    (norms.rms_norm_kernel, (64, 1e-5, True, True)),
    (norms.swiglu_kernel, (64, True)),
    (norms.head_norm_kernel, (4, 2, 16, 1e-6)),
    *[(builder, (KVLayout(SPEC, dtype, 64),)) for dtype in KV_DTYPES
      for builder in (attention.append_kernel, attention.attention_kernel)],
    (attention.attention_kernel, (KVLayout(SPEC, "int8", 64, sinks=4, window=16),)),
    (embedding.dense_lookup_kernel, (40, 64, "float16")),
    (embedding.packed_lookup_kernel, ("q8", 40, 64)),
    (embedding.packed_lookup_kernel, ("q4", 40, 64)),
    (embedding.last_row_kernel, (64,)),
]
DEFAULT_RUN = {"matmul_kernel-q4-48-64", "rms_norm_kernel-64-1e-05-True-True", "attention_kernel-int4",
               "append_kernel-int8", "packed_lookup_kernel-q4-40-64"}


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache folder and an empty in-process memo."""
    folder = tmp_path / "kernels"
    monkeypatch.setenv(cache.CACHE_ENV, str(folder))
    monkeypatch.setattr(cache, "_memo", {})
    return folder


def _counted(build):
    before = cache.counts()
    func = build()
    return func, cache.counts().since(before)


def _family_id(family) -> str:
    builder, args = family
    described = [f"{a.dtype}{'-windowed' if a.windowed else ''}" if isinstance(a, KVLayout) else str(a)
                 for a in args if a is not TARGET]
    return "-".join([builder.__name__, *described])


@pytest.mark.parametrize("builder, args", [
    pytest.param(*family, id=_family_id(family), marks=() if _family_id(family) in DEFAULT_RUN else pytest.mark.slow)
    for family in FAMILIES])
def test_loaded_kernel_is_the_parsed_one(builder, args, fresh, monkeypatch):
    parsed, cold = _counted(lambda: builder(*args))
    assert (cold.parsed, cold.loaded) == (1, 0)
    assert builder(*args) is parsed  # the memo
    monkeypatch.setattr(cache, "_memo", {})  # as in a new process
    loaded, warm = _counted(lambda: builder(*args))
    assert (warm.parsed, warm.loaded) == (0, 1)
    assert loaded is not parsed
    assert tvm_ffi.structural_equal(loaded, parsed)
    assert tvm_ffi.structural_hash(loaded) == tvm_ffi.structural_hash(parsed)
    assert tvm.ir.save_json(loaded) == tvm.ir.save_json(parsed)


def _entry(folder):
    (entry,) = folder.glob("*.json")
    return entry


def _reparsed(folder, monkeypatch):
    monkeypatch.setattr(cache, "_memo", {})
    func, counted = _counted(lambda: embedding.last_row_kernel(8))
    return func, counted.parsed == 1


@pytest.mark.parametrize("damage", ["truncated", "not json", "edited function", "other key", "other params",
                                    "not a primfunc"])
def test_a_damaged_entry_is_parsed_again_and_rewritten(damage, fresh, monkeypatch):
    good = embedding.last_row_kernel(8)
    path = _entry(fresh)
    original = path.read_text()
    entry = json.loads(original)
    if damage == "truncated":
        path.write_text(original[: len(original) // 2])
    elif damage == "not json":
        path.write_bytes(b"\xff\x00garbage")
    elif damage == "edited function":
        entry["function"] = entry["function"].replace('"int64"', '"int32"', 1)
        path.write_text(json.dumps(entry))
    elif damage == "other key":
        entry["key"] = entry["key"].replace("width=8", "width=9")
        path.write_text(json.dumps(entry))
    elif damage == "other params":
        entry["params"] = ["y", "x"]
        path.write_text(json.dumps(entry))
    else:  # a well-formed entry whose object is no PrimFunc
        entry["function"] = tvm.ir.save_json(tvm.tirx.IntImm("int32", 3))
        entry["sha256"] = hashlib.sha256(entry["function"].encode()).hexdigest()
        path.write_text(json.dumps(entry))
    func, reparsed = _reparsed(fresh, monkeypatch)
    assert reparsed and tvm_ffi.structural_equal(func, good)
    assert path.read_text() == original  # rewritten as it was first written
    func, reparsed = _reparsed(fresh, monkeypatch)
    assert not reparsed and tvm_ffi.structural_equal(func, good)  # the rewritten entry is good


def test_an_edited_kernel_source_misses(fresh, monkeypatch, tmp_path):
    embedding.last_row_kernel(8)
    copy = tmp_path / "package"
    shutil.copytree(cache._PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert cache.sources_digest(copy) == cache.sources_digest(cache._PACKAGE)
    (copy / "common.py").write_text((copy / "common.py").read_text() + "\n# an edit\n")
    assert cache.sources_digest(copy) != cache.sources_digest(cache._PACKAGE)
    monkeypatch.setattr(cache, "_PACKAGE", copy)
    cache._environment.cache_clear()
    try:
        _, reparsed = _reparsed(fresh, monkeypatch)
        assert reparsed and len(list(fresh.glob("*.json"))) == 2
    finally:
        cache._environment.cache_clear()


def test_a_folder_others_may_write_is_not_used(fresh, monkeypatch):
    embedding.last_row_kernel(8)
    os.chmod(fresh, 0o777)
    try:
        _, reparsed = _reparsed(fresh, monkeypatch)
        assert reparsed
    finally:
        os.chmod(fresh, 0o700)
    os.chmod(_entry(fresh), 0o666)
    _, reparsed = _reparsed(fresh, monkeypatch)
    assert reparsed


def test_off_keeps_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, "off")
    monkeypatch.setattr(cache, "_memo", {})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache.cache_folder() is None
    _, counted = _counted(lambda: embedding.last_row_kernel(8))
    assert counted.parsed == 1 and not any(tmp_path.iterdir())


def test_default_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_folder() == tmp_path / "air" / "kernels"


def _comparable(manifest: dict) -> dict:
    provenance = {k: v for k, v in manifest["provenance"].items() if k not in ("built_at", "stage_seconds")}
    # the library (its build paths) and the routing table (measured timings) differ between builds
    files = {k: v for k, v in manifest["files"].items() if not k.endswith("model.so") and k != "routing.json"}
    return {**manifest, "provenance": provenance, "files": files}


def test_a_warm_cache_builds_the_same_bundle(tmp_path):
    """A cold build (every kernel parsed, stored) and a warm one (every kernel loaded) in two
    processes: the same weights, the same manifest but for timings and the library, equal logits."""
    checkpoint = make_checkpoint(tmp_path / "ckpt", "qwen3", layers=1, head_dim=32, seed=5)
    env = cli_env(AIR_KERNEL_CACHE=str(tmp_path / "kernels"))
    builds = {}
    for name in ("cold", "warm"):
        result = run_module("air.compiler", "compile", "--target-model", str(checkpoint), "--quantization", "q4",
                            "--kv-cache", "int8", "--max-context", "64", "--output", str(tmp_path / name), env=env)
        assert result.returncode == 0, result.stderr
        builds[name] = result.stderr
    assert "kernel cache: 0 loaded" in builds["cold"] and " 0 parsed" not in builds["cold"]
    assert "kernel cache: 0 loaded" not in builds["warm"] and " 0 parsed" in builds["warm"]
    cold, warm = tmp_path / "cold", tmp_path / "warm"
    assert (cold / "target/weights.safetensors").read_bytes() == (warm / "target/weights.safetensors").read_bytes()
    manifests = [json.loads((b / "manifest.json").read_text()) for b in (cold, warm)]
    assert _comparable(manifests[0]) == {**_comparable(manifests[1]), "name": "cold"}
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    logits = []
    for bundle in (cold, warm):
        model = Bundle.load(bundle).target
        model.reset()
        logits.append((model.prefill(prompt), model.decode(5), model.verify([3, 5, 8])))
    for a, b in zip(*logits):
        np.testing.assert_array_equal(a, b)
