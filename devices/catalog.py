"""What a device is: its TVM target, how its libraries are linked, what its CPU must have,
and a profile (cores, memory, bandwidth) for estimates.

Only the workstation side (air-build) uses this; the runtime reads the result from the
bundle's manifest.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil
from pathlib import Path

from air.cpu_features import machine_features
from air.errors import AirError

# CPU features whose absence makes code compiled for them crash (SIGILL); the bundle lists
# those its target uses and the runtime checks them against the machine.
_X86_CHECKED_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                         "avx512dq", "avx512_vnni", "avx512_bf16")
_AARCH64_CHECKED_FEATURES = ("asimd", "asimddp")


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    arch: str  # machine name as platform.machine() reports it on the device
    tvm_target: dict
    cpu_features: tuple[str, ...]  # Linux feature names the compiled code relies on
    description: str
    linker: str | None = None  # cross compiler / linker; None: the host's default
    profile: dict = dataclasses.field(default_factory=dict)  # cores, memory_gb, bandwidth_gbs

    def describe(self) -> dict:
        return {"name": self.name, "arch": self.arch, "tvm_target": self.tvm_target,
                "cpu_features": list(self.cpu_features), "description": self.description,
                "profile": self.profile}

    def export_options(self) -> dict:
        """Keyword arguments for Executable.export_library (cross linking)."""
        if self.linker is None:
            return {}
        from tvm.support import cc

        return {"fcompile": cc.cross_compiler(self.linker)}


def host_device() -> Device:
    """The machine air-build runs on, with LLVM's name for its CPU (a bare llvm target emits SSE only)."""
    from tvm.target import codegen

    arch = platform.machine()
    cpu = codegen.llvm_get_system_cpu()
    triple = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(arch)
    if triple is None:
        raise AirError(f"host architecture '{arch}' is not supported (supported: x86_64, aarch64)")
    flags = machine_features() or set()
    checked = _X86_CHECKED_FEATURES if arch == "x86_64" else _AARCH64_CHECKED_FEATURES
    return Device(
        name="host",
        arch=arch,
        tvm_target={"kind": "llvm", "mtriple": triple, "mcpu": cpu, "num-cores": os.cpu_count() or 1},
        cpu_features=tuple(f for f in checked if f in flags),
        description=f"this machine ({arch}, {cpu})",
        profile={"cores": os.cpu_count() or 1},
    )


def _linux_aarch64(name, cpu, mattr, features, description, profile) -> Device:
    return Device(
        name=name, arch="aarch64",
        tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": cpu, "mattr": mattr,
                    "num-cores": profile["cores"]},
        cpu_features=features, description=description, linker=_cross_gcc(), profile=profile,
    )


_CROSS_NEEDS = "gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (Debian packages)"
NEEDS = {"host": "nothing beyond air-build", "raspberry-pi-5": _CROSS_NEEDS, "raspberry-pi-4": _CROSS_NEEDS,
         "aarch64-linux": _CROSS_NEEDS, "android-arm64": "the Android NDK (ANDROID_NDK_HOME or TVM_NDK_CC)"}


def _cross_gcc() -> str:
    if shutil.which("aarch64-linux-gnu-gcc") is None or not Path("/usr/aarch64-linux-gnu/lib/crti.o").exists():
        raise AirError(f"cross-compiling for aarch64 Linux needs {_CROSS_NEEDS}: "
                       "apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
    return "aarch64-linux-gnu-gcc"


def ndk_compiler() -> str:
    """The Android NDK's aarch64 clang, from TVM_NDK_CC or ANDROID_NDK_HOME."""
    explicit = os.environ.get("TVM_NDK_CC")
    if explicit:
        if shutil.which(explicit) is None:
            raise AirError(f"TVM_NDK_CC={explicit} is not an executable compiler")
        return explicit
    home = os.environ.get("ANDROID_NDK_HOME")
    if not home:
        raise AirError("android-arm64 needs the Android NDK: install it and set ANDROID_NDK_HOME "
                       "(or TVM_NDK_CC to its aarch64-linux-android<API>-clang)")
    candidates = sorted(Path(home).glob("toolchains/llvm/prebuilt/*/bin/aarch64-linux-android2[4-9]-clang")) + \
        sorted(Path(home).glob("toolchains/llvm/prebuilt/*/bin/aarch64-linux-android3[0-9]-clang"))
    if not candidates:
        raise AirError(f"ANDROID_NDK_HOME={home} has no toolchains/llvm/prebuilt/*/bin/aarch64-linux-android<API>-clang")
    return str(candidates[0])


def android_arm64() -> Device:
    return Device(
        name="android-arm64", arch="aarch64",
        tvm_target={"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "cortex-a76",
                    "mattr": ["+neon", "+dotprod"], "num-cores": 8},
        cpu_features=_AARCH64_CHECKED_FEATURES, description="Android phone, arm64-v8a with dotprod (Cortex-A76 class)",
        linker=ndk_compiler(),
        profile={"cores": 8, "memory_gb": 8, "bandwidth_gbs": 15},
    )


DEVICES = {
    "host": host_device,
    "raspberry-pi-5": lambda: _linux_aarch64(
        "raspberry-pi-5", "cortex-a76", ["+neon", "+dotprod"], ("asimd", "asimddp"),
        "Raspberry Pi 5 (Cortex-A76, NEON + dotprod)", {"cores": 4, "memory_gb": 8, "bandwidth_gbs": 10}),
    "raspberry-pi-4": lambda: _linux_aarch64(
        "raspberry-pi-4", "cortex-a72", ["+neon"], ("asimd",),
        "Raspberry Pi 4 (Cortex-A72, NEON)", {"cores": 4, "memory_gb": 4, "bandwidth_gbs": 4}),
    "aarch64-linux": lambda: _linux_aarch64(
        "aarch64-linux", "generic", ["+neon"], ("asimd",),
        "any 64-bit ARM Linux board (ARMv8-A with NEON)", {"cores": 4, "memory_gb": 4, "bandwidth_gbs": 4}),
    "android-arm64": android_arm64,
}


def resolve_device(name: str) -> Device:
    if name not in DEVICES:
        raise AirError(f"unknown device '{name}' (known: {', '.join(sorted(DEVICES))})")
    return DEVICES[name]()
