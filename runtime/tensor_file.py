"""Read safetensors files through a memory map, without torch (bf16 is widened to f32), and
write them with their data aligned so that the runtime can use the mapped pages in place."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from air.errors import AirError

# TVM takes a tensor's memory in place (from_dlpack) only at this alignment.
ALIGNMENT = 64
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "U8": np.uint8, "I8": np.int8}


class SafetensorsFile:
    """A memory-mapped safetensors file; bf16 is widened to f32 without torch. Opening it
    checks the header: a truncated file is refused here, before any tensor is read."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(header_len))
        except (OSError, struct.error, ValueError) as e:
            raise AirError(f"{path}: not a readable safetensors file ({e})") from None
        if not isinstance(header, dict):
            raise AirError(f"{path}: not a readable safetensors file (its header is not a mapping)")
        header.pop("__metadata__", None)
        self.entries = header
        self.data_start = 8 + header_len
        self.file_size = path.stat().st_size
        self._pages = None  # the whole file, mapped copy-on-write on first read
        for name, entry in header.items():
            self._check_entry(name, entry)

    def _check_entry(self, name: str, entry) -> None:
        try:
            start, end = entry["data_offsets"]
            valid = isinstance(entry["shape"], list) and isinstance(entry["dtype"], str) and 0 <= start <= end
        except (TypeError, KeyError, ValueError):
            valid = False
        if not valid:
            raise AirError(f"{self.path}: tensor '{name}' has a malformed header entry")
        if self.data_start + end > self.file_size:
            raise AirError(f"{self.path}: tensor '{name}' ends at byte {self.data_start + end} but the file has "
                           f"{self.file_size} (truncated)")

    def read(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        dtype_name = entry["dtype"]
        if dtype_name not in _DTYPES:
            raise AirError(f"{self.path}: tensor '{name}' has unsupported dtype {dtype_name}")
        start, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if self._pages is None:
            # Copy-on-write: the arrays are writable (DLPack exports only those), the file never changes.
            self._pages = np.memmap(self.path, dtype=np.uint8, mode="c")
        raw = self._pages[self.data_start + start:self.data_start + end]
        array = raw.view(_DTYPES[dtype_name]).reshape(shape)
        if dtype_name == "BF16":
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array


def write_aligned(path: Path, data: bytes) -> None:
    """Write a serialized safetensors file (safetensors.numpy.save's bytes) with its data starting at
    an ALIGNMENT boundary: the header padded with spaces, which the format allows."""
    (header_len,) = struct.unpack("<Q", data[:8])
    padding = -(8 + header_len) % ALIGNMENT
    view = memoryview(data)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", header_len + padding))
        f.write(view[8:8 + header_len])
        f.write(b" " * padding)
        f.write(view[8 + header_len:])
