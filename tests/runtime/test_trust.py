"""Bundles a device can trust: signatures, trust configuration, verified-once starts, and
crash-safe, race-safe archive unpacking. Real keys, real tampering, real processes."""

import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from checkpoints import make_checkpoint
from helpers import RUNTIME_ONLY

from air.compiler.build import compile_bundle
from air.compiler.recipe import load_recipe
from air.errors import AirError
from air.runtime import Bundle, verified
from air.runtime.manifest import read_manifest, verify_files



def air_build(*args):
    return subprocess.run([sys.executable, "-m", "air.compiler", *args], capture_output=True, text=True, timeout=300)


def device_run(bundle, *args, env=None):
    """air-run as on a device (compiler unimportable); stderr ends saying whether a model.so got mapped."""
    return subprocess.run([sys.executable, str(RUNTIME_ONLY), str(bundle), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def library_mapped(result) -> bool:
    lines = [line for line in result.stderr.splitlines() if line.startswith("bundle library loaded:")]
    assert len(lines) == 1, result.stderr
    return lines[0].endswith("True")


def assert_refused(result, *fragments):
    """Exit status 2, one line naming the problem, and no bundle library was ever mapped."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not library_mapped(result)


def stats(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["stats"]["verification"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test its own verification cache and no trusted keys from the home folder."""
    monkeypatch.setenv("AIR_VERIFIED_CACHE", str(tmp_path / "verified-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("AIR_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("AIR_REQUIRE_SIGNATURE", raising=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Two real key pairs: the device trusts 'ours', an attacker holds 'theirs'."""
    root = tmp_path_factory.mktemp("keys")
    for name in ("ours", "theirs"):
        made = air_build("keygen", "--output", str(root / name))
        assert made.returncode == 0, made.stderr
    return {name: {"key": root / name / "air-signing.key", "pub": root / name / "air-signing.pub"}
            for name in ("ours", "theirs")}


@pytest.fixture
def signed(pair, keys, tmp_path):
    bundle = tmp_path / "signed"
    shutil.copytree(pair["bundle"], bundle)
    result = air_build("sign", str(bundle), "--key", str(keys["ours"]["key"]))
    assert result.returncode == 0, result.stderr
    return bundle


PROMPT = ("--prompt-ids", "5,6,7", "--max-tokens", "3", "--json")


# --- keys and signing --------------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_reads(keys):
    assert keys["ours"]["key"].stat().st_mode & 0o777 == 0o600
    assert keys["ours"]["pub"].stat().st_mode & 0o777 == 0o644
    again = air_build("keygen", "--output", str(keys["ours"]["key"].parent))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert keys["ours"]["key"].read_bytes() != keys["theirs"]["key"].read_bytes()


def test_signed_bundle_runs_with_trust_and_inspect_names_the_signer(signed, keys):
    from air.runtime.signing import key_id, load_public_key

    ours = key_id(load_public_key(keys["ours"]["pub"]))
    inspected = air_build("inspect", str(signed))
    assert inspected.returncode == 0 and f"signature: signed by {ours} (valid" in inspected.stdout
    run = device_run(signed, *PROMPT, "--trust", str(keys["ours"]["pub"]))
    assert stats(run)["signature_checked"] is True and stats(run)["signer"] == ours
    assert library_mapped(run)  # the check itself sees model.so once the bundle is accepted
    unchecked = device_run(signed, *PROMPT)
    assert stats(unchecked)["signature_checked"] is False and stats(unchecked)["signer"] is None


def test_without_trust_cryptography_is_never_imported(signed, keys):
    script = ("import sys; from air.runtime import Bundle; from air.runtime.trust import Trust; "
              "Bundle.load(sys.argv[1]); print('cryptography' in sys.modules); "
              "Bundle.load(sys.argv[1], trust=Trust.configure((sys.argv[2],))); print('cryptography' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script, str(signed), str(keys["ours"]["pub"])],
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["False", "True"], result.stderr


def test_compile_sign_signs_before_publishing(keys, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "ckpt", "llama", layers=1)
    out = tmp_path / "bundle"
    built = air_build("compile", "--target-model", str(checkpoint), "--max-context", "32", "--output", str(out),
                      "--sign", str(keys["ours"]["key"]), "--archive", "--quiet")
    assert built.returncode == 0, built.stderr
    assert device_run(out, *PROMPT, "--trust", str(keys["ours"]["pub"])).returncode == 0
    with tarfile.open(tmp_path / "bundle.air") as tar:
        assert tar.getnames()[:2] == ["manifest.json", "manifest.sig"]
    bad_key = air_build("compile", "--target-model", str(checkpoint), "--output", str(tmp_path / "other"),
                        "--sign", str(keys["ours"]["pub"]))
    assert bad_key.returncode == 2 and "cannot read the signing key" in bad_key.stderr
    assert not (tmp_path / "other").exists()


# --- tampering, each refused before any model.so is mapped -------------------------------

def _flip_library_byte(bundle, keys, other):
    library = bundle / "target" / "model.so"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0x01
    library.write_bytes(bytes(data))


def _rewrite_manifest(bundle, keys, other):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["runtime"]["threads"] = 1
    path.write_text(json.dumps(manifest, indent=2))


def _resign_with_foreign_key(bundle, keys, other):
    _rewrite_manifest(bundle, keys, other)
    assert air_build("sign", str(bundle), "--key", str(keys["theirs"]["key"])).returncode == 0


def _forge_key_id(bundle, keys, other):
    from air.runtime.signing import key_id, load_public_key

    _resign_with_foreign_key(bundle, keys, other)
    path = bundle / "manifest.sig"
    record = json.loads(path.read_text())
    record["key_id"] = key_id(load_public_key(keys["ours"]["pub"]))
    path.write_text(json.dumps(record))


def _swap_file_from_other_bundle(bundle, keys, other):
    shutil.copyfile(other / "target" / "model.so", bundle / "target" / "model.so")


def _remove_signature(bundle, keys, other):
    (bundle / "manifest.sig").unlink()


TAMPERING = {
    "flipped byte in model.so": (_flip_library_byte, "target/model.so"),
    "rewritten manifest": (_rewrite_manifest, "does not match the manifest"),
    "re-signed with a foreign key": (_resign_with_foreign_key, "which this device does not trust"),
    "foreign signature under our key id": (_forge_key_id, "does not match the manifest"),
    "model.so swapped from another signed bundle": (_swap_file_from_other_bundle, "target/model.so"),
    "unsigned": (_remove_signature, "bundle is not signed"),
}


@pytest.fixture(scope="module")
def other_signed(keys, tmp_path_factory):
    """A second bundle signed by the trusted key: its files are the swap attack's material."""
    root = tmp_path_factory.mktemp("other")
    checkpoint = make_checkpoint(root / "ckpt", "llama", layers=1, seed=5)
    compile_bundle(str(checkpoint), None, load_recipe("host").with_overrides(max_context=32), root / "bundle", quiet=True)
    assert air_build("sign", str(root / "bundle"), "--key", str(keys["ours"]["key"])).returncode == 0
    return root / "bundle"


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_signed_bundle_is_refused_before_loading(case, signed, keys, other_signed):
    tamper, message = TAMPERING[case]
    assert device_run(signed, *PROMPT, "--trust", str(keys["ours"]["pub"])).returncode == 0  # fills the cache too
    tamper(signed, keys, other_signed)
    assert_refused(device_run(signed, *PROMPT, "--trust", str(keys["ours"]["pub"])), message)


def test_trusted_keys_folder_and_mandatory_signatures(signed, keys, tmp_path):
    folder = tmp_path / "trusted"
    folder.mkdir()
    shutil.copy(keys["theirs"]["pub"], folder / "vendor.pub")
    env = dict(os.environ, AIR_TRUSTED_KEYS=str(folder))
    assert_refused(device_run(signed, *PROMPT, env=env), "which this device does not trust")
    shutil.copy(keys["ours"]["pub"], folder / "ours.pub")
    assert stats(device_run(signed, *PROMPT, env=env))["signature_checked"] is True
    os.chmod(folder / "ours.pub", 0o666)
    assert_refused(device_run(signed, *PROMPT, env=env), "must not be writable by group or others")
    os.chmod(folder / "ours.pub", 0o644)

    default = Path(os.environ["XDG_CONFIG_HOME"]) / "air" / "trusted-keys"  # ~/.config/air/trusted-keys
    default.mkdir(parents=True)
    shutil.copy(keys["theirs"]["pub"], default / "theirs.pub")
    assert_refused(device_run(signed, *PROMPT), "which this device does not trust")
    shutil.rmtree(default)

    required = dict(os.environ, AIR_REQUIRE_SIGNATURE="1")
    assert_refused(device_run(signed, *PROMPT, env=required), "AIR_REQUIRE_SIGNATURE is set but no trusted key")
    missing = dict(os.environ, AIR_TRUSTED_KEYS=str(tmp_path / "absent"))
    assert_refused(device_run(signed, *PROMPT, env=missing), "trusted-keys folder not found")


# --- verified-once starts ----------------------------------------------------------------

def test_second_start_skips_the_rehash_and_verify_forces_it(signed, keys):
    trust = ("--trust", str(keys["ours"]["pub"]))
    files = len(read_manifest(signed)["files"])
    cache = Path(os.environ["AIR_VERIFIED_CACHE"])
    first = stats(device_run(signed, *PROMPT, *trust))
    second = stats(device_run(signed, *PROMPT, *trust))
    forced = stats(device_run(signed, *PROMPT, *trust, "--verify"))
    assert (first["files_hashed"], first["files_remembered"]) == (files, 0)
    assert (second["files_hashed"], second["files_remembered"]) == (0, files)
    assert (forced["files_hashed"], forced["files_remembered"]) == (files, 0)
    assert cache.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in cache.iterdir())


def test_cache_is_no_way_around_a_changed_file(signed, keys):
    trust = ("--trust", str(keys["ours"]["pub"]))
    assert device_run(signed, *PROMPT, *trust).returncode == 0
    weights = signed / "draft" / "weights.safetensors"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size and mtime: only ctime tells
    assert_refused(device_run(signed, *PROMPT, *trust), "draft/weights.safetensors", "sha256")


def test_cache_that_others_may_write_is_ignored(signed, keys):
    trust = ("--trust", str(keys["ours"]["pub"]))
    assert device_run(signed, *PROMPT, *trust).returncode == 0
    cache = Path(os.environ["AIR_VERIFIED_CACHE"])
    os.chmod(cache, 0o777)
    assert stats(device_run(signed, *PROMPT, *trust))["files_remembered"] == 0
    os.chmod(cache, 0o700)
    for entry in cache.iterdir():
        os.chmod(entry, 0o666)
    assert stats(device_run(signed, *PROMPT, *trust))["files_remembered"] == 0


# --- archives ------------------------------------------------------------------------------

def padded_archive(pair, folder: Path, megabytes: int) -> Path:
    """The pair bundle with one extra listed file of random bytes (so unpacking takes a while), packed."""
    from air.runtime.archive import pack
    from air.runtime.manifest import file_record, write_manifest

    bundle = folder / "padded"
    shutil.copytree(pair["bundle"], bundle)
    (bundle / "padding.bin").write_bytes(random.Random(0).randbytes(megabytes << 20))
    manifest = read_manifest(bundle)
    manifest["files"]["padding.bin"] = file_record(bundle, "padding.bin")
    write_manifest(bundle, manifest)
    archive = folder / "padded.air"
    pack(bundle, archive)
    shutil.rmtree(bundle)
    return archive


UNPACK = ("import sys, os; from pathlib import Path; from air.runtime.archive import unpack; "
          "from air.runtime.trust import Trust; print('unpacking', flush=True); "
          "t = unpack(Path(sys.argv[1]), Trust.configure()); print(os.stat(t / 'manifest.json').st_ino, flush=True)")


def unpacker(archive: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", UNPACK, str(archive)], stdout=subprocess.PIPE, text=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".padded.bundle.") and not p.name.endswith(".lock"))


def assert_whole_or_absent(target: Path) -> None:
    if target.exists():
        verify_files(target, read_manifest(target))  # every file, full hash


def kill_during_unpack(pair, tmp_path, repetitions: int) -> None:
    archive = padded_archive(pair, tmp_path, 48)
    target = tmp_path / "padded.bundle"
    rng = random.Random(20)
    interrupted = 0
    for attempt in range(repetitions):
        shutil.rmtree(target, ignore_errors=True)
        process = unpacker(archive)
        assert process.stdout.readline().strip() == "unpacking"
        deadline = time.monotonic() + 60
        while not leftovers(tmp_path) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.4) if attempt else 0)  # the first kill lands as soon as unpacking starts
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        interrupted += process.returncode == -signal.SIGKILL and not target.exists()
        assert_whole_or_absent(target)
    assert interrupted >= 1, "no kill landed during an unpack"
    finished = unpacker(archive)
    finished.communicate(timeout=300)
    assert finished.returncode == 0
    verify_files(target, read_manifest(target))
    assert leftovers(tmp_path) == [], "the next unpacker removes what killed ones left"


def test_kill_during_unpack_leaves_nothing_trusted(pair, tmp_path):
    kill_during_unpack(pair, tmp_path, repetitions=3)


@pytest.mark.slow
def test_kill_during_unpack_fifty_times(pair, tmp_path):
    kill_during_unpack(pair, tmp_path, repetitions=50)


def test_two_first_runs_share_one_unpacked_copy(pair, tmp_path):
    archive = padded_archive(pair, tmp_path, 16)
    first, second = unpacker(archive), unpacker(archive)
    outputs = [process.communicate(timeout=300)[0].split() for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0
    assert outputs[0][1] == outputs[1][1], "both use the one folder the first published"
    assert leftovers(tmp_path) == [] and [p.name for p in tmp_path.glob("*.bundle")] == ["padded.bundle"]
    runs = [subprocess.Popen([sys.executable, "-m", "air.runtime", str(archive), *PROMPT],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], results
    assert json.loads(results[0][0])["tokens"] == json.loads(results[1][0])["tokens"]


def test_signed_archive_checked_before_anything_is_written(pair, keys, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(pair["bundle"], bundle)
    assert air_build("sign", str(bundle), "--key", str(keys["theirs"]["key"])).returncode == 0
    assert air_build("pack", str(bundle), "--output", str(tmp_path / "b.air")).returncode == 0
    assert_refused(device_run(tmp_path / "b.air", *PROMPT, "--trust", str(keys["ours"]["pub"])),
                   "which this device does not trust")
    assert not (tmp_path / "b.bundle").exists() and not list(tmp_path.glob(".b.bundle.unpack-*"))
    assert air_build("sign", str(bundle), "--key", str(keys["ours"]["key"])).returncode == 0
    assert air_build("pack", str(bundle), "--output", str(tmp_path / "b.air")).returncode == 0
    run = device_run(tmp_path / "b.air", *PROMPT, "--trust", str(keys["ours"]["pub"]))
    assert stats(run)["signature_checked"] is True
    assert stats(run)["files_hashed"] == 0, "the hashes taken while unpacking are remembered"

    # a member changed inside the archive is refused as it is written; nothing is published
    tampered = tmp_path / "t.air"
    with tarfile.open(tmp_path / "b.air") as source, tarfile.open(tampered, "w") as out:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name == "target/model.so":
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            out.addfile(member, io.BytesIO(data))
    assert_refused(device_run(tampered, *PROMPT, "--trust", str(keys["ours"]["pub"])), "target/model.so", "sha256")
    assert not (tmp_path / "t.bundle").exists() and not list(tmp_path.glob(".t.bundle.unpack-*"))


@pytest.fixture
def small_disk(tmp_path):
    """mount(size): a tmpfs folder of that many bytes, removed after the test; None where
    this process may not mount (not root)."""
    mounted = []

    def mount(size: int) -> Path | None:
        folder = tmp_path / "disk"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            return None
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def _file_size_limit(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_gives_one_line_and_no_partial_folder(pair, tmp_path, small_disk):
    archive = tmp_path / "pair.air"
    assert air_build("pack", str(pair["bundle"]), "--output", str(archive)).returncode == 0
    size = archive.stat().st_size
    disk = small_disk(size + size // 2)  # room for the archive and half the unpacked bundle
    if disk is not None:
        shutil.copy(archive, disk / "pair.air")
        assert_refused(device_run(disk / "pair.air", *PROMPT), "No space left on device", "nothing was unpacked")
    else:  # the next-best real mechanism without mount rights: the kernel's file size limit
        disk = tmp_path
        largest = max(r["size"] for r in read_manifest(pair["bundle"])["files"].values())
        result = subprocess.run([sys.executable, str(RUNTIME_ONLY), str(archive), *PROMPT],
                                capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(largest // 2))
        assert_refused(result, "File too large", "nothing was unpacked")
    assert sorted(p.name for p in disk.iterdir() if "pair" in p.name) == [".pair.bundle.lock", "pair.air"]


def test_background_hashes_are_the_manifests_and_a_file_changed_after_them_is_refused(pair, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(pair["bundle"], bundle)
    manifest = read_manifest(bundle)
    verified.hash_in_background(["--prompt", "not a bundle", str(bundle)]).join()
    for relpath, record in manifest["files"].items():
        assert verified._background[str(bundle / relpath)][1] == record["sha256"], relpath
    weights = bundle / "target" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))  # after the thread read it: its digest must not be taken
    with pytest.raises(AirError, match="target/weights.safetensors.*sha256"):
        Bundle.load(bundle)


def test_background_hashing_skips_what_verification_refuses_and_never_hangs(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"a": {"size": 3}, "fifo": {"size": 0},
                                                                   "short": {"size": 9}, "odd": "x"}}))
    (tmp_path / "a").write_bytes(b"abc")
    (tmp_path / "short").write_bytes(b"abc")
    os.mkfifo(tmp_path / "fifo")  # reading it would block forever
    thread = verified.hash_in_background([str(tmp_path)])
    thread.join(30)
    assert not thread.is_alive()
    hashed = {Path(p).name for p in verified._background if Path(p).parent == tmp_path}
    assert hashed == {"a"}
    (tmp_path / "manifest.json").write_text("[1, 2]")
    assert verified.hash_in_background([str(tmp_path)]) is None
    fifo_manifest = tmp_path / "fifo-bundle"
    fifo_manifest.mkdir()
    os.mkfifo(fifo_manifest / "manifest.json")
    assert verified.hash_in_background([str(fifo_manifest)]) is None
