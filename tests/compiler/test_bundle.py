"""The bundle as written by air-build: manifest contents, inspect, output handling."""

import hashlib
import json
import subprocess
import sys

import pytest
from checkpoints import make_checkpoint

from air.compiler.checkpoint import load_checkpoint
from air.compiler.kv_layouts import KVLayout
from air.compiler.layers import WeightFormat
from air.compiler.model import CausalLM
from air.compiler.tensor_map import tensor_map
from air.devices import host_device
from air.runtime.manifest import FORMAT_VERSION, kv_spec


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


def test_kv_cache_entry_reads_back_as_the_compiler_wrote_it(pair):
    for role, entry in json.loads((pair["bundle"] / "manifest.json").read_text())["models"].items():
        spec = kv_spec(entry, role)
        assert spec.to_dict() == entry["kv_cache"]
        (group,) = spec.groups
        assert group.kind == "dense" and group.layers == tuple(range(entry["architecture"]["num_layers"]))
        assert [t.name for t in spec.tensors] == ["cache_data", "cache_scales"]


@pytest.mark.parametrize("scheme, leaves", [("f16", ("tiles",)), ("q4", ("qs", "scales"))])
def test_tensor_map_covers_every_parameter(checkpoints, scheme, leaves):
    """Each family's mapping names exactly the compiled model's parameters (rope_inv_freq is computed)."""
    tvm_target = json.dumps(host_device().tvm_target)
    for path in checkpoints.values():
        spec = load_checkpoint(path).spec
        model = CausalLM(spec, KVLayout(spec, "f32", 64), WeightFormat(scheme, tvm_target=tvm_target))
        mapping = tensor_map(spec)
        mapped = {f"{layer}.{leaf}" for layer in mapping.matrices for leaf in leaves} | set(mapping.vectors)
        derived = {"rope_inv_freq", "rope_local_inv_freq"} if spec.rope_local_theta else {"rope_inv_freq"}
        assert {name for name, _ in model.named_parameters()} == mapped | derived


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


def test_archive_runs_directly_and_is_verified(pair, tmp_path):
    import io
    import tarfile

    from air.runtime import Bundle

    archive = tmp_path / "pair.air"
    packed = air_build("pack", str(pair["bundle"]), "--output", str(archive))
    assert packed.returncode == 0, packed.stderr
    run = subprocess.run([sys.executable, "-m", "air.runtime", str(archive), "--prompt-ids", "5,6,7",
                          "--max-tokens", "6", "--json", "--speculate", "0"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    expected = Bundle.load(pair["bundle"]).generate(prompt_ids=[5, 6, 7], max_tokens=6, speculate=0).tokens
    assert json.loads(run.stdout)["tokens"] == expected
    assert (tmp_path / "pair.bundle" / "manifest.json").is_file()  # unpacked once, beside the archive

    # an archive whose weights were altered after packing is refused by the hash check
    tampered = tmp_path / "tampered.air"
    with tarfile.open(archive) as source, tarfile.open(tampered, "w") as out:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name == "target/weights.safetensors":
                data = data[:-4] + b"\0\0\0\1"
            out.addfile(member, io.BytesIO(data))
    bad = subprocess.run([sys.executable, "-m", "air.runtime", str(tampered), "--prompt", "x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "target/weights.safetensors" in bad.stderr and "sha256" in bad.stderr

    # members that would leave the folder are refused
    escape = tmp_path / "escape.air"
    with tarfile.open(escape, "w") as out:
        manifest = (pair["bundle"] / "manifest.json").read_bytes()
        for name, data in (("manifest.json", manifest), ("../evil.txt", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    refused = subprocess.run([sys.executable, "-m", "air.runtime", str(escape), "--prompt", "x"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "cannot unpack" in refused.stderr
    assert not (tmp_path / "evil.txt").exists()


def test_devices_command_and_its_old_name():
    devices = air_build("devices")
    assert devices.returncode == 0, devices.stderr
    assert devices.stdout.startswith("host: recipes") and "raspberry-pi-5:" in devices.stdout
    assert air_build("targets").stdout == devices.stdout  # kept for old scripts
    listed = air_build("--help").stdout
    assert "devices" in listed and "targets" not in listed
