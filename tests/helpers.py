"""Helpers the test folders share: where things are, and the CLIs as subprocesses."""

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RUNTIME_ONLY = TESTS / "runtime_only.py"  # air-run as a device runs it: TVM runtime library only


def run_module(*args, cwd=None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m ARGS` as a user runs it, output captured as text."""
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          **kwargs)


def air_run(bundle, *args, **kwargs) -> subprocess.CompletedProcess:
    return run_module("air.runtime", str(bundle), *args, **kwargs)


def host_target(**overrides):
    """This machine's TVM target (optionally with another mcpu), for compiling kernels directly."""
    import tvm

    from air.devices import host_device

    return tvm.target.Target({**host_device().tvm_target, **overrides})


def cli_env(**extra) -> dict:
    """This process's environment with `extra` set, for a CLI subprocess."""
    return {**os.environ, **extra}


def own_stderr(stderr: str) -> list[str]:
    """stderr's lines without the TVM runtime's own log lines ("[12:00:00] /project/src/runtime/...:
    Warning: ..."), which it prints when a machine's cores are not what its thread pool expects."""
    return [line for line in stderr.strip().splitlines() if not re.match(r"\[\d\d:\d\d:\d\d\] \S+/src/runtime/", line)]
