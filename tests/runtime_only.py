"""Run air-run as a device would: TVM runtime library only, compiler code unimportable.

Usage: python runtime_only.py AIR-RUN-ARGS...   (prints a last stderr line telling whether
the TVM compiler library got loaded)."""

import os
import runpy
import sys

os.environ["TVM_USE_RUNTIME_LIB"] = "1"
BLOCKED = ("air.compiler", "air.devices", "tvm.relax", "tvm.s_tir", "torch", "transformers")


class BlockCompiler:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED):
            raise ImportError(f"{name} is not available on a device")
        return None


sys.meta_path.insert(0, BlockCompiler())
sys.argv = ["air-run", *sys.argv[1:]]
try:
    runpy.run_module("air.runtime", run_name="__main__")
finally:
    with open("/proc/self/maps") as maps:
        mapped = maps.read()
    print(f"tvm compiler library loaded: {'libtvm_compiler' in mapped}", file=sys.stderr)
    print(f"bundle library loaded: {'/model.so' in mapped}", file=sys.stderr)
