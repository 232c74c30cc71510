"""The CPU features of the machine this code runs on, by the names Linux uses, and its cores.

x86_64: the `flags` of /proc/cpuinfo. aarch64: the HWCAP bits of the process's auxiliary
vector (/proc/self/auxv), which also holds under qemu user-mode emulation, where
/proc/cpuinfo describes the host instead.
"""

from __future__ import annotations

import os
import platform
import struct

_AT_HWCAP = 16
_AARCH64_HWCAP = {"fp": 1 << 0, "asimd": 1 << 1, "aes": 1 << 3, "crc32": 1 << 7, "atomics": 1 << 8,
                  "fphp": 1 << 9, "asimdhp": 1 << 10, "asimdrdm": 1 << 12, "asimddp": 1 << 20, "sve": 1 << 22}


def _x86_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def _aarch64_hwcaps() -> set[str] | None:
    try:
        data = open("/proc/self/auxv", "rb").read()
    except OSError:
        return None
    for offset in range(0, len(data) - 15, 16):
        key, value = struct.unpack_from("<QQ", data, offset)
        if key == _AT_HWCAP:
            return {name for name, bit in _AARCH64_HWCAP.items() if value & bit}
    return None


def machine_features() -> set[str] | None:
    """Feature names of this machine, or None when they cannot be read."""
    arch = platform.machine()
    if arch in ("x86_64", "AMD64"):
        return _x86_flags()
    if arch in ("aarch64", "arm64"):
        return _aarch64_hwcaps()
    return None


def usable_cores() -> int:
    """Physical cores this process may run on: the CPUs of its affinity mask, with the hardware
    threads of one core (SMT siblings) counted once; the CPU count where that is unknown.

    TVM's own default halves the CPU count on x86 on the assumption of two threads per core,
    which gave one thread on a 2-core machine without SMT."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))
