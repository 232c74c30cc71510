"""What a start of air-run costs: the modules it imports, and weights used in place, not copied."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

from air.runtime import Bundle
from air.runtime.manifest import file_record, read_manifest, write_manifest
from air.runtime.tensor_file import ALIGNMENT, SafetensorsFile


def _mappings(path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of `path`."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == str(path):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def test_air_run_imports_neither_compiler_nor_optional_extras(pair):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "air.runtime", str(pair["bundle"]),
                             "--prompt", "def fibonacci(n):", "--max-tokens", "4", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    # (tvm_ffi's attempts at torch and ml_dtypes are listed too, failing at once; their parts are not)
    for heavy in ("torch._C", "ml_dtypes._ml_dtypes_ext", "tvm.relax", "tvm.s_tir", "air.compiler", "jinja2", "starlette"):
        assert heavy not in imported
    assert "tvm" in imported and "air.runtime.bundle" in imported
    direct = Bundle.load(pair["bundle"]).generate(prompt="def fibonacci(n):", max_tokens=4)
    assert json.loads(result.stdout)["tokens"] == direct.tokens


def test_weights_are_used_in_place_and_the_file_never_changes(pair):
    root = pair["bundle"]
    entry = read_manifest(root)["models"]["target"]
    path = (root / entry["weights"]).resolve()
    file = SafetensorsFile(path)
    assert file.data_start % ALIGNMENT == 0
    model = Bundle.load(root).target
    mapped = _mappings(path)
    in_place = 0
    for name, param in zip(entry["params"], model.params):
        address = np.from_dlpack(param).ctypes.data
        aligned = (file.data_start + file.entries[name]["data_offsets"][0]) % ALIGNMENT == 0
        inside = any(start <= address < end for start, end in mapped)
        assert inside == aligned, name
        in_place += inside
    assert in_place > len(entry["params"]) // 2
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    view = np.from_dlpack(model.params[0])
    view.reshape(-1).view(np.uint8)[:16] = 0xAB  # a write lands in this process's private copy of the page
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_copied_weights_of_an_unaligned_file_give_the_same_tokens(pair, tmp_path):
    """A bundle whose weights file does not align its data (as older writers made it) loads by copying."""
    copy = tmp_path / "bundle"
    shutil.copytree(pair["bundle"], copy)
    manifest = read_manifest(copy)
    relpath = manifest["models"]["target"]["weights"]
    save_file(load_file(copy / relpath), str(copy / relpath))
    manifest["files"][relpath] = file_record(copy, relpath)
    write_manifest(copy, manifest)
    assert SafetensorsFile(copy / relpath).data_start % ALIGNMENT != 0
    args = dict(prompt="def fibonacci(n):", max_tokens=12, speculate=2)
    assert Bundle.load(copy).generate(**args).tokens == Bundle.load(pair["bundle"]).generate(**args).tokens


def test_a_request_loads_only_the_models_it_runs(pair):
    bundle = Bundle.load(pair["bundle"])
    assert not bundle._models  # nothing loaded before a request
    bundle.generate(prompt_ids=[5, 6, 7], max_tokens=4, speculate=0)
    assert set(bundle._models) == {"target"}
    bundle.generate(prompt_ids=[5, 6, 7], max_tokens=4, speculate=2)
    assert set(bundle._models) == {"target", "draft"}
