"""Bad input: one line naming the problem, a non-zero exit, no traceback, nothing half-written."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from checkpoints import make_checkpoint, trim_head
from helpers import air_run, run_module


def build(*args, cwd=None):
    return run_module("air.compiler", "compile", *args, cwd=cwd)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def no_bundle_left(folder: Path, name: str):
    leftovers = [p.name for p in folder.iterdir() if name in p.name]
    assert leftovers == [], leftovers


@pytest.fixture
def good(tmp_path):
    return make_checkpoint(tmp_path / "good", "llama")


def test_unsupported_architecture(good, tmp_path):
    config = json.loads((good / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (good / "config.json").write_text(json.dumps(config))
    result = build("--target-model", str(good), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "unsupported architecture 'GPT2LMHeadModel'")
    no_bundle_left(tmp_path, "out")


def test_missing_tensor_leaves_no_bundle(good, tmp_path):
    tensors = load_file(good / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, good / "model.safetensors")
    result = build("--target-model", str(good), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "missing tensor 'model.layers.1.mlp.up_proj.weight'")
    no_bundle_left(tmp_path, "out")


def test_misshaped_tensor(good, tmp_path):
    tensors = load_file(good / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"] = tensors["model.layers.0.self_attn.k_proj.weight"][:16]
    save_file(tensors, good / "model.safetensors")
    result = build("--target-model", str(good), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "'model.layers.0.self_attn.k_proj.weight' has shape (16, 64), expected (32, 64)")


def test_truncated_checkpoint_is_refused_before_compiling(good, tmp_path):
    weights = good / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    result = build("--target-model", str(good), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "model.safetensors", "truncated")
    assert "compiling" not in result.stdout + result.stderr  # refused while reading the checkpoint
    no_bundle_left(tmp_path, "out")


@pytest.mark.parametrize("shape, args, message", [
    ({"heads": 8, "kv_heads": 2}, [], "head_dim 8 is not supported by the KV-cache kernels"),
    ({}, ["--max-context", "128", "--kv-window", "126", "--kv-sinks", "4"],
     "kv_cache window 126 + sinks 4 exceed the context of 128"),
])
def test_limits_are_checked_before_compiling(tmp_path, shape, args, message):
    checkpoint = make_checkpoint(tmp_path / "model", "llama", **shape)
    result = build("--target-model", str(checkpoint), *args, "--output", str(tmp_path / "out"))
    assert_one_line_error(result, message)
    assert "compiling" not in result.stdout + result.stderr
    no_bundle_left(tmp_path, "out")


def test_draft_with_another_vocabulary(good, tmp_path):
    draft = make_checkpoint(tmp_path / "draft", "llama", vocab=352)
    result = build("--target-model", str(good), "--draft-model", str(draft), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "draft vocabulary size 352 differs from the target's 320")
    no_bundle_left(tmp_path, "out")


def test_draft_with_same_size_but_other_tokens(good, tmp_path):
    draft = make_checkpoint(tmp_path / "draft", "llama")
    tokenizer = json.loads((draft / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first = next(iter(vocab))
    vocab["renamed"] = vocab.pop(first)
    (draft / "tokenizer.json").write_text(json.dumps(tokenizer))
    result = build("--target-model", str(good), "--draft-model", str(draft), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "draft tokenizer's vocabulary differs")


@pytest.mark.parametrize("head, message", [
    ([3, 5] * 4, "token id 3 appears more than once"),
    ([0, 320], "token id 320 is outside the vocabulary (0..319)"),
    ([-1], "token id -1 is outside the vocabulary"),
    ([], "token_ids is empty"),
    ({"ids": [1]}, "should be {\"token_ids\": [integer token ids]}"),
    ([1, "2"], "should be {\"token_ids\": [integer token ids]}"),
])
def test_malformed_head_tokens(good, tmp_path, head, message):
    draft = make_checkpoint(tmp_path / "draft", "llama", seed=1)
    data = head if isinstance(head, dict) else {"token_ids": head}
    (draft / "head_tokens.json").write_text(json.dumps(data))
    result = build("--target-model", str(good), "--draft-model", str(draft), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "head_tokens.json", message)
    assert "compiling" not in result.stdout + result.stderr
    no_bundle_left(tmp_path, "out")


def test_trimmed_head_is_refused_for_a_target_and_with_tied_embeddings(good, tmp_path):
    trim_head(good, range(100))
    result = build("--target-model", str(good), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "head_tokens.json", "a target's LM head must cover the whole vocabulary")
    tied = trim_head(make_checkpoint(tmp_path / "tied", "llama", tied=True), range(100))
    result = build("--target-model", str(make_checkpoint(tmp_path / "target", "llama")), "--draft-model", str(tied),
                   "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "head_tokens.json", "tie_word_embeddings false")
    no_bundle_left(tmp_path, "out")


@pytest.mark.parametrize("recipe, message", [
    ("no-such-device", "unknown recipe 'no-such-device'"),
    ("BAD_KEY", "unknown key 'turbo'"),
    ("BAD_VALUE", "quantization 'q3' is not one of"),
    ("BAD_DRAFT_VALUE", "draft_quantization 'int3' is not one of"),
    ("BAD_YAML", "not valid YAML"),
])
def test_bad_recipes(good, tmp_path, recipe, message):
    texts = {"BAD_KEY": "device: host\nturbo: true\n", "BAD_VALUE": "device: host\nquantization: q3\n",
             "BAD_DRAFT_VALUE": "device: host\ndraft_quantization: int3\n", "BAD_YAML": "device: [host\n"}
    if recipe in texts:
        path = tmp_path / "recipe.yaml"
        path.write_text(texts[recipe])
        recipe = str(path)
    result = build("--target-model", str(good), "--recipe", recipe, "--output", str(tmp_path / "out"))
    assert_one_line_error(result, message)


@pytest.mark.parametrize("remove, message", [
    ("config.json", "missing config.json"),
    ("tokenizer.json", "missing tokenizer.json"),
    ("model.safetensors", "no model.safetensors"),
])
def test_missing_checkpoint_files(good, tmp_path, remove, message):
    (good / remove).unlink()
    result = build("--target-model", str(good), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, message)


def test_missing_checkpoint_folder(tmp_path):
    result = build("--target-model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "checkpoint folder not found")


def test_missing_shard(tmp_path):
    from checkpoints import load_reference

    source = make_checkpoint(tmp_path / "single", "llama")
    load_reference(source).save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, tmp_path / "sharded" / name)
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    assert build("--target-model", str(tmp_path / "sharded"), "--output", str(tmp_path / "ok")).returncode == 0
    shards[-1].unlink()
    result = build("--target-model", str(tmp_path / "sharded"), "--output", str(tmp_path / "out"))
    assert_one_line_error(result, "missing weight shard", shards[-1].name)


def test_interrupted_build_leaves_no_bundle(good, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "air.compiler", "compile", "--target-model", str(good),
                                "--output", str(tmp_path / "out")], stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # wait until compilation is under way
        if "compiling target" in line:
            break
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=60) != 0
    assert "Traceback" not in rest
    no_bundle_left(tmp_path, "out")


# --- the bundle side -------------------------------------------------------------------

@pytest.fixture
def bundle_copy(pair, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(pair["bundle"], copy)
    return copy


def test_tampered_library_is_refused(bundle_copy):
    library = bundle_copy / "target" / "model.so"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))
    assert_one_line_error(air_run(bundle_copy, "--prompt-ids", "1,2,3"), "target/model.so", "sha256")
    assert_one_line_error(run_module("air.compiler", "inspect", str(bundle_copy)), "target/model.so")


def test_truncated_weights_are_refused(bundle_copy):
    weights = bundle_copy / "draft" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert_one_line_error(air_run(bundle_copy, "--prompt-ids", "1,2,3"), "draft/weights.safetensors", "truncated")


def test_missing_bundle_file_is_refused(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    assert_one_line_error(air_run(bundle_copy, "--prompt", "hi"), "tokenizer.json", "missing")


def test_manifest_damage_is_refused(bundle_copy):
    manifest = bundle_copy / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])
    assert_one_line_error(air_run(bundle_copy, "--prompt", "hi"), "unreadable manifest")


def test_manifest_path_escape_is_refused(bundle_copy):
    manifest_path = bundle_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../outside"] = {"size": 1, "sha256": "0" * 64}
    manifest_path.write_text(json.dumps(manifest))
    assert_one_line_error(air_run(bundle_copy, "--prompt", "hi"), "leaves the bundle")


def edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_other_format_versions_are_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=99))
    assert_one_line_error(air_run(bundle_copy, "--prompt", "hi"), "format version 99 is newer", "update air-runtime")
    edit_manifest(bundle_copy, lambda m: m.update(format_version=1))
    assert_one_line_error(air_run(bundle_copy, "--prompt", "hi"), "format version 1 is older", "rebuild the bundle")


def drop_fixed_capacity(manifest):
    del manifest["models"]["draft"]["kv_cache"]["groups"][0]["fixed_capacity"]


def wrong_bytes_per_token(manifest):
    manifest["models"]["target"]["kv_cache"]["bytes_per_token"] += 1


def windowed_without_ring(manifest):
    manifest["models"]["target"]["kv_cache"]["groups"][0]["kind"] = "windowed"


def unknown_cache_dtype(manifest):
    manifest["models"]["target"]["kv_cache"]["groups"][0]["tensors"][0]["dtype"] = "float64"


@pytest.mark.parametrize("change, fragments", [
    (drop_fixed_capacity, ("models.draft.kv_cache.groups[0] lacks 'fixed_capacity'",)),
    (wrong_bytes_per_token, ("models.target.kv_cache.bytes_per_token", "disagrees with its groups")),
    (windowed_without_ring, ("a windowed cache needs window >= 1",)),
    (unknown_cache_dtype, ("tensors[0].dtype 'float64'",)),
])
def test_malformed_kv_cache_entries_are_refused(bundle_copy, change, fragments):
    edit_manifest(bundle_copy, change)
    assert_one_line_error(air_run(bundle_copy, "--prompt", "hi"), *fragments)


def test_bundle_for_another_architecture_is_refused(bundle_copy):
    manifest_path = bundle_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["device"]["arch"] = "aarch64"
    manifest_path.write_text(json.dumps(manifest))
    assert_one_line_error(air_run(bundle_copy, "--prompt", "hi"), "built for aarch64")


def test_prompt_longer_than_context(pair):
    ids = ",".join(["5"] * 200)  # the pair's bundle has a context of 128
    assert_one_line_error(air_run(pair["bundle"], "--prompt-ids", ids), "prompt has 200 tokens", "context is 128")


@pytest.mark.parametrize("args, message", [
    (["--prompt-ids", "1,x"], "--prompt-ids must be comma-separated integers"),
    (["--prompt-ids", "1,99999"], "outside the vocabulary"),
    ([], "give exactly one of --prompt or --prompt-ids"),
])
def test_bad_prompts(pair, args, message):
    assert_one_line_error(air_run(pair["bundle"], *args), message)


def test_not_a_bundle(tmp_path):
    assert_one_line_error(air_run(tmp_path, "--prompt", "hi"), "not a bundle")
    assert_one_line_error(air_run(tmp_path / "absent", "--prompt", "hi"), "bundle folder not found")
