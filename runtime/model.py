"""One compiled model on the device: its library, weights and KV cache.

The cache tensors are the ones the manifest lists; the runtime sizes them per request
(`reset(context)`), and every compiled call updates them in place. `length` is how many
positions are valid, so rolling back is only a change of that number.

A longrope model (manifest "rope_switch") rotates with its short factors while a sequence is
at most `after` positions long and with its long factors past that (compiler/rope.py states
the rule): each call passes the table its rows need, and when the cache holds positions
rotated with the other table they are recomputed from their tokens first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

from air.errors import AirError
from .contract import call_arguments
from .manifest import head_tokens, kv_spec
from .tensor_file import ALIGNMENT, SafetensorsFile

_REUSED_LENGTHS = 16  # token tensors kept for calls of up to this many tokens (decode, verify)


class CompiledModel:
    def __init__(self, root: Path, entry: dict, device, role: str):
        self.entry = entry
        self.device = device
        library = tvm.runtime.load_module(str(root / entry["library"]))
        self.vm = VirtualMachine(library, device)
        self.params = _load_params(root / entry["weights"], entry["params"], device)
        self.rope_switch = entry.get("rope_switch")
        if self.rope_switch is not None:
            switch = self.rope_switch
            self._rope_slot = entry["params"].index(switch["param"])
            long_table, = _load_params(root / entry["weights"], [switch["long"]], device)
            self._rope_tables = {False: self.params[self._rope_slot], True: long_table}
            self._long = False  # the table the cache's positions were rotated with
        self.kv = kv_spec(entry, role)
        self.vocab_size = entry["vocab_size"]
        self.head_tokens = head_tokens(root, entry, role)  # logit row -> token id (None: row i is token i)
        self.max_context = self.kv.position_limit
        self.max_append = self.kv.max_append
        self.caches: list = []
        self.capacities: tuple[int, ...] = ()
        self.room = 0  # positions the allocated caches can reach
        self.length = 0
        # The cached positions' tokens, kept only where a longrope switch may need them again.
        self.history = np.zeros(self.max_context, np.int32) if self.rope_switch is not None else None
        self.holder = None  # the session whose tokens the cache holds (set by Session)
        # Input tensors reused across calls, written through numpy views of their memory (the
        # runtime's device is the CPU): a new tensor cost 10 us and copyfrom 5 us, against a
        # small draft model's step of 50 us.
        self._start = _InputTensor((1,), "int64", device)
        self._tokens: dict[int, _InputTensor] = {}
        self._prefill = self.vm["prefill"]
        self._decode = self.vm["decode"]
        self._verify = self.vm["verify"]

    # -- memory -----------------------------------------------------------------------------

    def reset(self, context: int | None = None) -> None:
        """Start a new sequence, with cache room for `context` positions (default: all)."""
        self.length = 0
        self.reserve(context)

    def reserve(self, context: int | None = None) -> None:
        """Cache room for `context` positions (default: all), keeping the first `length`."""
        capacities = self.kv.capacities(context if context is not None else self.kv.max_context)
        if self.caches and all(new <= old for new, old in zip(capacities, self.capacities)):
            return
        kept = self.caches if self.length else []
        self.caches = []  # free the old tensors before allocating the new ones
        shapes = self.kv.shapes(capacities)
        if kept:
            self.caches = [_grown(old, shape, self.device) for old, (shape, _) in zip(kept, shapes)]
        else:
            self.caches = [tvm.runtime.empty(shape, dtype, self.device) for shape, dtype in shapes]
        self.capacities = capacities
        self.room = self.kv.reachable(capacities)

    # -- calls ------------------------------------------------------------------------------

    def _check_room(self, count: int) -> None:
        if not self.caches:
            self.reset()
        if self.length + count > self.room:
            raise AirError(f"context full: {self.length} + {count} tokens exceed the cache's {self.room} positions")

    def _run(self, function, tokens: np.ndarray):
        if len(tokens) > self.max_append:
            raise ValueError(f"one call appends at most {self.max_append} tokens, got {len(tokens)}")
        self._check_room(len(tokens))
        self._start.write(self.length)
        feed = self._tokens.get(len(tokens))
        if feed is None:
            feed = _InputTensor((len(tokens),), "int32", self.device)
            if len(tokens) <= _REUSED_LENGTHS:
                self._tokens[len(tokens)] = feed
        feed.write(tokens)
        out = function(*call_arguments(feed.tensor, self.caches, self._start.tensor, self.params))
        if self.history is not None:
            self.history[self.length:self.length + len(tokens)] = tokens
        self.length += len(tokens)
        # A view of the result, not a copy (the array keeps the tensor alive): copying a
        # 150k-vocabulary row cost tens of microseconds per step.
        return np.from_dlpack(out)

    def prefill(self, tokens, chunk: int = 256) -> np.ndarray:
        """Feed a prompt (in chunks, to bound activation memory); logits of its last position."""
        tokens = np.asarray(tokens, dtype=np.int32)
        self._check_room(len(tokens))
        self._rotate_for(self.length + len(tokens))
        return self._prefill_chunks(tokens, chunk)[0]

    def _prefill_chunks(self, tokens: np.ndarray, chunk: int = 256) -> np.ndarray:
        chunk = min(chunk, self.max_append)
        logits = None
        for start in range(0, len(tokens), chunk):
            logits = self._run(self._prefill, tokens[start:start + chunk])
        return logits

    def decode(self, token: int) -> np.ndarray:
        self._rotate_for(self.length + 1)
        return self._run(self._decode, np.array([token], dtype=np.int32))[0]

    def verify(self, tokens) -> np.ndarray:
        """Logits for every position of `tokens` [n, vocab], appending all of them to the cache."""
        tokens = np.asarray(tokens, dtype=np.int32)
        split = self._short_rows(len(tokens))
        if 0 < split < len(tokens):  # the rows within the short factors' reach, then the rows past it
            head = np.array(self.verify(tokens[:split]))  # a copy: the next call may reuse the result's memory
            return np.concatenate([head, self.verify(tokens[split:])])
        self._rotate_for(self.length + len(tokens))
        return self._run(self._verify, tokens)

    # -- longrope ----------------------------------------------------------------------------

    def _rotate_for(self, end: int) -> None:
        """Pass the rotation table a sequence of `end` positions needs; recompute the cached
        positions from their tokens when they were rotated with the other one."""
        if self.rope_switch is None:
            return
        long = end > self.rope_switch["after"]
        if long == self._long:
            return
        self.params[self._rope_slot] = self._rope_tables[long]
        self._long = long
        if self.length:
            kept = self.history[:self.length].copy()
            self.length = 0
            self._prefill_chunks(kept)

    def _short_rows(self, count: int) -> int:
        """How many of `count` new rows a longrope model still rotates with its short factors."""
        if self.rope_switch is None:
            return count
        return min(count, max(0, self.rope_switch["after"] - self.length))

    def token_id(self, row: int) -> int:
        """The token a row of this model's logits stands for."""
        return row if self.head_tokens is None else int(self.head_tokens[row])

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} from {self.length}")
        self.length = length


class _InputTensor:
    """A device tensor written through a numpy view of its memory (NumPy 1.x makes such views
    read-only: then through copyfrom)."""

    def __init__(self, shape: tuple[int, ...], dtype: str, device):
        self.tensor = tvm.runtime.empty(shape, dtype, device)
        self.dtype = dtype
        view = np.from_dlpack(self.tensor)
        self.view = view if view.flags.writeable else None

    def write(self, values) -> None:
        if self.view is not None:
            self.view[:] = values
        else:
            self.tensor.copyfrom(np.asarray(values, dtype=self.dtype).reshape(self.tensor.shape))


def _grown(old, shape: tuple[int, ...], device):
    """A cache tensor of `shape` holding `old`'s values in its leading slots (a tensor without
    a capacity axis, such as the placeholder scales of float caches, is kept as it is)."""
    values = old.numpy()
    if values.shape == shape:
        return old
    grown = np.zeros(shape, dtype=values.dtype)
    grown[tuple(slice(0, n) for n in values.shape)] = values
    return tvm.runtime.tensor(grown, device)


def _load_params(path: Path, names: list[str], device) -> list:
    file = SafetensorsFile(path)
    missing = [n for n in names if n not in file.entries]
    if missing:
        raise AirError(f"{path}: weights lack '{missing[0]}'")
    return [_tensor(file.read(name), device) for name in names]


def _tensor(array: np.ndarray, device):
    """A TVM tensor over the array's own memory (the weights file's mapped pages) where TVM accepts
    it: contiguous, writable (copy-on-write) and aligned; else a copy."""
    if array.flags.c_contiguous and array.flags.writeable and array.ctypes.data % ALIGNMENT == 0:
        return tvm.runtime.from_dlpack(array)
    return tvm.runtime.tensor(np.ascontiguousarray(array), device)
