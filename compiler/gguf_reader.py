"""Open a .gguf file with the gguf library without trusting it.

The library builds arrays from header counts and loops over them: the reader below refuses any
read past the end of the file and any count the remaining bytes cannot hold before the library
acts on it, and the tensors' data is checked (aligned, inside the file, not overlapping, of a
type the library can dequantize) before any of it is used.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from air.errors import AirError

FLOAT_TYPES = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
_KNOWN_TYPES = {int(t) for t in gguf.GGMLQuantizationType if t in gguf.GGML_QUANT_SIZES}


class _Malformed(Exception):
    """The file's own counts or offsets point outside it."""


class _BoundedReader(gguf.GGUFReader):
    """GGUFReader that checks every count and offset against the file size before using it.

    The library builds arrays from header counts and loops over them; unchecked, an absurd
    count reads past the end or spins for hours."""

    _MIN_ITEM_BYTES = {gguf.GGUFValueType.STRING: 8, gguf.GGUFValueType.ARRAY: 12}
    _ARRAY = int(gguf.GGUFValueType.ARRAY)

    def _get(self, offset, dtype, count=1, override_order=None):
        if type(self.data) is np.memmap:
            self.data = self.data.view(np.ndarray)  # same mapping; slicing a memmap costs 4x more
        itemsize = np.dtype(dtype).itemsize
        if offset < 0 or count < 0 or offset + itemsize * int(count) > len(self.data):
            raise _Malformed(f"a read of {int(count)} x {itemsize} bytes at offset {offset} runs past "
                             f"the end of the file ({len(self.data)} bytes; truncated?)")
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs, raw_type):
        if raw_type == self._ARRAY:
            item_type, count = int(self._get(orig_offs, np.uint32)[0]), int(self._get(orig_offs + 4, np.uint64)[0])
            self._check_count(count, self._item_bytes(item_type), orig_offs + 12, "array")
        return super()._get_field_parts(orig_offs, raw_type)

    def _build_fields(self, offs, count):
        self._check_count(int(count), 8 + 4 + 1, offs, "metadata key")
        return super()._build_fields(offs, count)

    def _build_tensor_info(self, offs, count):
        self._check_count(int(count), 8 + 4 + 4 + 8, offs, "tensor")
        return super()._build_tensor_info(offs, count)

    def _get_tensor_info_field(self, orig_offs):
        field = super()._get_tensor_info_field(orig_offs)
        raw_type = int(field.parts[4][0])
        if raw_type not in _KNOWN_TYPES:
            raise _Malformed(f"tensor '{field.name}' has unknown type {raw_type}")
        return field

    def _item_bytes(self, item_type: int) -> int:
        try:
            kind = gguf.GGUFValueType(item_type)
        except ValueError:
            raise _Malformed(f"unknown metadata value type {item_type}") from None
        if kind in self._MIN_ITEM_BYTES:
            return self._MIN_ITEM_BYTES[kind]
        return np.dtype(self.gguf_scalar_to_np[kind]).itemsize

    def _check_count(self, count: int, min_bytes: int, offset: int, what: str) -> None:
        if count * min_bytes > len(self.data) - offset:
            raise _Malformed(f"{count} {what} entries cannot fit in the {len(self.data) - offset} bytes left")


def open_gguf(path: Path) -> gguf.GGUFReader:
    if not path.is_file():
        raise AirError(f"{path}: GGUF file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] != b"GGUF":
        raise AirError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
    if len(head) < 8 or int.from_bytes(head[4:8], "little") not in gguf.gguf_reader.READER_SUPPORTED_VERSIONS:
        raise AirError(f"{path}: unsupported GGUF version {int.from_bytes(head[4:8], 'little')} "
                       f"(supported: {', '.join(map(str, gguf.gguf_reader.READER_SUPPORTED_VERSIONS))})")
    try:
        return _BoundedReader(path)
    except (_Malformed, ValueError, KeyError, UnicodeDecodeError, OverflowError, RecursionError) as e:
        raise AirError(f"{path}: malformed GGUF file ({e})") from None


def read_metadata(reader: gguf.GGUFReader, path: Path) -> dict:
    values = {}
    for name, field in reader.fields.items():
        try:
            values[name] = field.contents()
        except (ValueError, UnicodeDecodeError, IndexError) as e:
            raise AirError(f"{path}: malformed GGUF metadata '{name}' ({e})") from None
    return values


def check_tensor_data(reader: gguf.GGUFReader, path: Path) -> None:
    """Each tensor's data aligned, inside the file, not overlapping another, of a type we can read."""
    spans = []
    for tensor in reader.tensors:
        start = tensor.data_offset
        if (start - reader.data_offset) % reader.alignment:
            raise AirError(f"{path}: tensor '{tensor.name}' data at offset {start} is not aligned to "
                           f"{reader.alignment} bytes")
        if start + tensor.n_bytes > len(reader.data):
            raise AirError(f"{path}: tensor '{tensor.name}' runs past the end of the file (truncated?)")
        spans.append((start, start + tensor.n_bytes, tensor.name))
        _check_readable(tensor, path)
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise AirError(f"{path}: tensors '{first}' and '{second}' overlap in the file")


def _check_readable(tensor, path: Path) -> None:
    qtype = tensor.tensor_type
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if block == 1 and qtype not in FLOAT_TYPES:
        raise AirError(f"{path}: tensor '{tensor.name}' has type {qtype.name}, not a weight type")
    try:
        gguf.quants.dequantize(np.zeros(size, np.uint8), qtype)
    except NotImplementedError:
        raise AirError(f"{path}: tensor '{tensor.name}' has type {qtype.name}, which the gguf library "
                       "cannot dequantize") from None


def require(meta: dict, key: str, path: Path):
    if key not in meta:
        raise AirError(f"{path}: missing required GGUF metadata '{key}'")
    return meta[key]
