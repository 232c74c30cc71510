"""Cross-compiled bundles on an emulated ARM board (qemu user-mode, Debian arm64, the TVM
runtime only): the same greedy tokens as the host bundle; refusals for missing features."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import make_checkpoint

from air.compiler.build import compile_bundle
from air.compiler.recipe import load_recipe
from air.runtime import Bundle
from helpers import REPO

BOARD_SCRIPT = REPO / "tools" / "arm-board.sh"
BOARD_PACKAGES = ("apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy ml_dtypes pyyaml click "
                  "typing_extensions psutil cloudpickle tokenizers safetensors")
PROMPT = "def read_config(path):"


def board_env(cpu: str) -> dict:
    env = dict(os.environ)
    env.update({"BOARD_PKGS": BOARD_PACKAGES, "BOARD_RUNTIME_ONLY": "1", "BOARD_CPU": cpu,
                "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": "/opt/air"})
    return env


@pytest.fixture(scope="module")
def board():
    """The board (cached between runs), with air's runtime (and nothing of its compiler) on it."""
    folder = Path(os.environ.get("AIR_BOARD_DIR", Path.home() / ".cache" / "air-board"))
    setup = subprocess.run(["bash", str(BOARD_SCRIPT), "setup", str(folder)], env=board_env("cortex-a72"),
                           capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stderr[-2000:]
    site = folder / "rootfs" / "opt" / "air"
    shutil.rmtree(site, ignore_errors=True)
    (site / "air" / "runtime").mkdir(parents=True)
    for source in (REPO / "air").glob("*.py"):
        shutil.copy(source, site / "air")
    for source in (REPO / "runtime").glob("*.py"):
        shutil.copy(source, site / "air" / "runtime")
    assert not (folder / "rootfs/usr/local/lib/python3.11/dist-packages/tvm/lib/libtvm_compiler.so").exists()
    return folder


def run_on_board(board: Path, bundle: Path, cpu: str, *args):
    on_board = board / "rootfs" / "tmp" / bundle.name
    shutil.rmtree(on_board, ignore_errors=True)
    shutil.copytree(bundle, on_board)
    # qemu user-mode sees the host's files too: give it the copy's full path
    return subprocess.run([str(board / "python"), "-m", "air.runtime", str(on_board), *args],
                          env=board_env(cpu), capture_output=True, text=True, timeout=600, cwd=board)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("arm") / "ckpt", "qwen2", tied=True, seed=3)


@pytest.mark.parametrize("recipe, cpu", [("raspberry-pi-4", "cortex-a72"), ("raspberry-pi-5", "cortex-a76")])
def test_board_generates_the_host_tokens(board, checkpoint, tmp_path, recipe, cpu):
    device_recipe = load_recipe(recipe).with_overrides(max_context=256)
    compile_bundle(str(checkpoint), None, device_recipe, tmp_path / recipe, quiet=True)
    manifest = json.loads((tmp_path / recipe / "manifest.json").read_text())
    assert manifest["device"]["arch"] == "aarch64"
    assert (tmp_path / recipe / "target" / "model.so").read_bytes()[18] == 183  # ELF e_machine: AArch64

    host_recipe = load_recipe("host").with_overrides(max_context=256, kv_cache=device_recipe.kv_cache)
    compile_bundle(str(checkpoint), None, host_recipe, tmp_path / "host", quiet=True)
    expected = Bundle.load(tmp_path / "host").generate(prompt=PROMPT, max_tokens=24).tokens

    result = run_on_board(board, tmp_path / recipe, cpu, "--prompt", PROMPT, "--max-tokens", "24", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["tokens"] == expected


def test_board_without_dotprod_refuses_a_dotprod_bundle(board, checkpoint, tmp_path):
    compile_bundle(str(checkpoint), None, load_recipe("raspberry-pi-5").with_overrides(max_context=64),
                   tmp_path / "pi5", quiet=True)
    result = run_on_board(board, tmp_path / "pi5", "cortex-a72", "--prompt", PROMPT, "--max-tokens", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "needs CPU features this machine lacks: asimddp" in result.stderr


def test_host_refuses_an_arm_bundle(checkpoint, tmp_path):
    compile_bundle(str(checkpoint), None, load_recipe("aarch64-linux").with_overrides(max_context=64),
                   tmp_path / "arm", quiet=True)
    result = subprocess.run([sys.executable, "-m", "air.runtime", str(tmp_path / "arm"), "--prompt", "x"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "built for aarch64 (aarch64-linux); this machine is x86_64" in result.stderr


def test_routing_costs_over_rpc_on_the_board(board, checkpoint, tmp_path):
    import socket

    draft = make_checkpoint(tmp_path / "draft", "qwen2", tied=True, hidden=32, layers=1, heads=2, kv_heads=1,
                            intermediate=64, seed=4)
    with socket.socket() as probe:  # a free port for the board's RPC server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = board_env("cortex-a72")
    started = subprocess.run(["bash", str(BOARD_SCRIPT), "rpc-start", str(board), str(port)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    try:
        recipe = load_recipe("raspberry-pi-4").with_overrides(max_context=128)
        compile_bundle(str(checkpoint), str(draft), recipe, tmp_path / "rpc", quiet=True, rpc=f"127.0.0.1:{port}")
    finally:
        subprocess.run(["bash", str(BOARD_SCRIPT), "rpc-stop", str(board)], env=env, capture_output=True, timeout=60)
    table = json.loads((tmp_path / "rpc" / "routing.json").read_text())
    measured = table["measurements"]
    assert measured["cost_source"] == f"measured on the device over TVM RPC at 127.0.0.1:{port}"
    assert measured["costs"]["target_decode"] > 0 and len(measured["costs"]["target_verify"]) == 8

    compile_bundle(str(checkpoint), str(draft), recipe, tmp_path / "estimated", quiet=True)
    estimated = json.loads((tmp_path / "estimated" / "routing.json").read_text())["measurements"]
    assert estimated["cost_source"].startswith("estimated from the device profile")
    assert estimated["acceptance"] == measured["acceptance"]  # measured on the same host copy of the models
