"""What a device is: its TVM target, how its libraries are linked, and what its CPU must have.

Only the workstation side (air-build) uses this; the runtime reads the result from the
bundle's manifest.
"""

from __future__ import annotations

import dataclasses
import os
import platform

from air.runtime.errors import AirError

# CPU features whose absence makes code compiled for them crash (SIGILL); the bundle
# lists those its target uses and the runtime checks them against the machine.
_X86_CHECKED_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                         "avx512dq", "avx512_vnni", "avx512_bf16")


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    arch: str  # machine name as platform.machine() reports it on the device
    tvm_target: dict
    cpu_features: tuple[str, ...]  # /proc/cpuinfo flag names the compiled code relies on
    description: str

    def describe(self) -> dict:
        return {"name": self.name, "arch": self.arch, "tvm_target": self.tvm_target,
                "cpu_features": list(self.cpu_features), "description": self.description}


def _host_cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_device() -> Device:
    """The machine air-build runs on, with LLVM's name for its CPU (a bare llvm target emits SSE only)."""
    from tvm.target import codegen

    arch = platform.machine()
    cpu = codegen.llvm_get_system_cpu()
    triple = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(arch)
    if triple is None:
        raise AirError(f"host architecture '{arch}' is not supported (supported: x86_64, aarch64)")
    flags = _host_cpu_flags()
    checked = _X86_CHECKED_FEATURES if arch == "x86_64" else ("asimd", "asimddp")
    target = {"kind": "llvm", "mtriple": triple, "mcpu": cpu, "num-cores": os.cpu_count() or 1}
    return Device(
        name="host",
        arch=arch,
        tvm_target=target,
        cpu_features=tuple(f for f in checked if f in flags),
        description=f"this machine ({arch}, {cpu})",
    )


DEVICES = {"host": host_device}


def resolve_device(name: str) -> Device:
    if name not in DEVICES:
        raise AirError(f"unknown device '{name}' (known: {', '.join(sorted(DEVICES))})")
    return DEVICES[name]()
