"""The bundle as written by air-build: manifest contents, inspect, output handling."""

import hashlib
import json
import subprocess
import sys

from checkpoints import make_checkpoint

from air.runtime.manifest import FORMAT_VERSION


def air_build(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "air.compiler", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_manifest_lists_every_file_with_its_hash(pair):
    bundle = pair["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    on_disk = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk
    for rel, record in manifest["files"].items():
        data = (bundle / rel).read_bytes()
        assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert set(manifest["models"]) == {"target", "draft"}
    target = manifest["models"]["target"]
    assert target["architecture"]["architecture"] == "LlamaForCausalLM"
    assert target["kv_cache"]["bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # layers, k+v, kv heads, head dim, f32
    assert manifest["device"]["tvm_target"]["mcpu"] not in ("", "generic")
    sources = manifest["provenance"]["sources"]
    assert sources["draft"]["files"]["config.json"] == hashlib.sha256(
        (pair["draft"] / "config.json").read_bytes()).hexdigest()


def test_inspect_prints_summary_and_json(pair):
    text = air_build("inspect", str(pair["bundle"]))
    assert text.returncode == 0, text.stderr
    assert "files verified" in text.stdout and "draft: Qwen2ForCausalLM" in text.stdout
    as_json = air_build("inspect", str(pair["bundle"]), "--json")
    assert json.loads(as_json.stdout)["models"]["target"]["kv_cache"]["max_context"] == 128


def test_default_output_and_replacing_a_bundle(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "tiny-llama", "llama", layers=1)
    work = tmp_path / "work"
    work.mkdir()
    first = air_build("compile", "--target-model", str(checkpoint), cwd=work)
    assert first.returncode == 0, first.stderr
    for stage in ("reading checkpoints", "compiling target model", "writing manifest"):
        assert stage in first.stderr
    bundle = work / "dist" / "tiny-llama"
    before = json.loads((bundle / "manifest.json").read_text())["provenance"]["built_at"]
    second = air_build("compile", "--target-model", str(checkpoint), "--max-context", "64", cwd=work)
    assert second.returncode == 0, second.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["models"]["target"]["kv_cache"]["max_context"] == 64
    assert [p.name for p in (work / "dist").iterdir()] == ["tiny-llama"], "no staging or retired folders left"
    assert before  # the first build had a manifest too


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", "llama", layers=1)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = air_build("compile", "--target-model", str(checkpoint), "--output", str(precious))
    assert result.returncode != 0 and "is not a bundle; refusing to replace it" in result.stderr
    assert (precious / "notes.txt").read_text() == "keep me"
