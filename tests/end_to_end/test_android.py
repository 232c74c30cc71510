"""Android: real target and linking path; without the NDK a clear stop at once."""

import json
import os
import subprocess
import sys

import pytest

from checkpoints import make_checkpoint

from air.compiler.model import CausalLM
from air.compiler.pipeline import compile_module
from air.compiler.kv_layouts import KVLayout
from air.compiler.layers import WeightFormat
from air.compiler.spec import spec_from_config
from air.devices import resolve_device


def compile_android(checkpoint, output, env):
    return subprocess.run([sys.executable, "-m", "air.compiler", "compile", "--target-model", str(checkpoint),
                           "--recipe", "android-arm64", "--output", str(output), "--max-context", "64"],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "ckpt", "llama", layers=1)


def without_ndk() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("ANDROID_NDK_HOME", "TVM_NDK_CC")}


def test_without_the_ndk_the_build_stops_at_once(checkpoint, tmp_path):
    result = compile_android(checkpoint, tmp_path / "out", without_ndk())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "android-arm64 needs the Android NDK" in result.stderr and "ANDROID_NDK_HOME" in result.stderr
    assert "compiling" not in result.stderr  # stopped before any work
    assert not (tmp_path / "out").exists()


def test_an_ndk_folder_without_its_clang_is_named(checkpoint, tmp_path):
    env = without_ndk() | {"ANDROID_NDK_HOME": str(tmp_path)}
    result = compile_android(checkpoint, tmp_path / "out", env)
    assert result.returncode == 2 and "aarch64-linux-android<API>-clang" in result.stderr


def test_android_code_is_aarch64_android_and_links(checkpoint, tmp_path, monkeypatch):
    # Debian's aarch64 cross gcc stands in for the NDK's clang as the linker.
    monkeypatch.setenv("TVM_NDK_CC", "aarch64-linux-gnu-gcc")
    device = resolve_device("android-arm64")
    spec = spec_from_config({"architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 32,
                             "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}, "t")
    model = CausalLM(spec, KVLayout(spec, "f16", 64), WeightFormat("q8", json.dumps(device.tvm_target)))
    module, _ = model.export_tvm(spec=model.export_spec())
    executable = compile_module(module, device.tvm_target, spec.num_layers)
    llvm_ir = next(m for m in executable.mod.imports if m.kind == "llvm").inspect_source("ll")
    assert 'target triple = "aarch64-linux-android"' in llvm_ir
    assert "+dotprod" in llvm_ir
    assert "llvm.aarch64.neon.sdot" in llvm_ir  # the q8 kernels use the dot-product instructions

    result = compile_android(checkpoint, tmp_path / "bundle", dict(os.environ))
    assert result.returncode == 0, result.stderr
    library = (tmp_path / "bundle" / "target" / "model.so").read_bytes()
    assert library[:4] == b"\x7fELF" and library[18] == 183  # AArch64 shared object
