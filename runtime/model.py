"""One compiled model on the device: its library, weights and KV cache.

The cache is allocated once at the bundle's stated size and every compiled call updates
it in place; `length` is how many positions are valid, so rolling back is only a change of
that number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm.runtime.vm import VirtualMachine

from .errors import AirError
from .tensor_file import SafetensorsFile


class CompiledModel:
    def __init__(self, root: Path, entry: dict, device):
        self.entry = entry
        self.device = device
        library = tvm.runtime.load_module(str(root / entry["library"]))
        self.vm = VirtualMachine(library, device)
        self.params = _load_params(root / entry["weights"], entry["params"], device)
        kv = entry["kv_cache"]
        self.max_context = kv["max_context"]
        self.cache = tvm.runtime.empty(tuple(kv["shape"]), kv["dtype"], device)
        self.vocab_size = entry["vocab_size"]
        self.length = 0
        self._prefill = self.vm["prefill"]
        self._decode = self.vm["decode"]
        self._verify = self.vm["verify"]

    def _check_room(self, count: int) -> None:
        if self.length + count > self.max_context:
            raise AirError(
                f"context full: {self.length} + {count} tokens exceed the bundle's context of {self.max_context}"
            )

    def _run(self, function, tokens: np.ndarray):
        self._check_room(len(tokens))
        out = function(tvm.runtime.tensor(tokens, self.device), self.cache, tvm_ffi.Shape([self.length]), self.params)
        self.length += len(tokens)
        return out.numpy()

    def prefill(self, tokens, chunk: int = 256) -> np.ndarray:
        """Feed a prompt (in chunks, to bound activation memory); logits of its last position."""
        tokens = np.asarray(tokens, dtype=np.int32)
        self._check_room(len(tokens))
        logits = None
        for start in range(0, len(tokens), chunk):
            logits = self._run(self._prefill, tokens[start:start + chunk])
        return logits[0]

    def decode(self, token: int) -> np.ndarray:
        return self._run(self._decode, np.array([token], dtype=np.int32))[0]

    def verify(self, tokens) -> np.ndarray:
        """Logits for every position of `tokens` [n, vocab], appending all of them to the cache."""
        return self._run(self._verify, np.asarray(tokens, dtype=np.int32))

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} from {self.length}")
        self.length = length

    def reset(self) -> None:
        self.length = 0


def _load_params(path: Path, names: list[str], device) -> list:
    file = SafetensorsFile(path)
    missing = [n for n in names if n not in file.entries]
    if missing:
        raise AirError(f"{path}: weights lack '{missing[0]}'")
    return [tvm.runtime.tensor(np.ascontiguousarray(file.read(name)), device) for name in names]
