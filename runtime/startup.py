"""Import TVM without its optional extras, and for air-run the way a device has it: runtime only.

air-run and air-build call this first, before anything imports tvm. On a workstation that also
has the compiler installed, a plain `import tvm` loads the compiler library, and tvm_ffi imports
torch (interop) and ml_dtypes (bfloat16 and float8 numpy types) when they are installed: seconds,
and 1,600 more modules. Neither needs them: their tensors are f32, f16, int8 and uint8 (the
compiler converts bfloat16 checkpoints with numpy).
"""

from __future__ import annotations

import os
import sys

HIDDEN = ("torch", "ml_dtypes")


def import_tvm(runtime_only: bool = True) -> None:
    """Import tvm (runtime-only unless told) with HIDDEN unimportable meanwhile, unless this process imported tvm already."""
    if "tvm" in sys.modules:
        return
    saved = os.environ.get("TVM_USE_RUNTIME_LIB")
    if runtime_only:
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"  # read once, while tvm loads its libraries
    hidden = [name for name in HIDDEN if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # makes tvm_ffi's optional `import name` fail at once
    try:
        import tvm  # noqa: F401
    finally:
        for name in hidden:
            del sys.modules[name]
        if saved is None:
            os.environ.pop("TVM_USE_RUNTIME_LIB", None)
        else:
            os.environ["TVM_USE_RUNTIME_LIB"] = saved
