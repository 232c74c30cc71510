"""The kernel cache: each hand-written kernel is parsed once, then reused in process and across builds.

Parsing a TVMScript kernel takes seconds; the same kernel comes back for every layer, every
exported function and every build. `@cached_kernel` on a builder keys each call by the
builder's qualified name, its arguments, a digest of this package's sources (and of the files
defining dataclass arguments, such as a KVLayout), and the Python, TVM and tvm-ffi versions:
an edit to any kernel file misses every entry. A call is served from an in-process memo, else
from a file in the cache folder (`tvm.ir.load_json` of the PrimFunc), else parsed and stored.

The folder is `$AIR_KERNEL_CACHE` (`off`: no folder, the memo only), else
`$XDG_CACHE_HOME/air/kernels` (default `~/.cache/air/kernels`). A loaded PrimFunc becomes
native code, so the folder and its files must be this user's and writable by no one else, and
an entry is used only when its key, the digest of its text and its parameter names all match
and it loads as a PrimFunc; anything else is parsed again and rewritten. Writes go through a
temporary file renamed into place, so builds running at once never read a partial entry.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import os
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import tvm
import tvm_ffi
from tvm.target import Target
from tvm.tirx import PrimFunc

CACHE_ENV = "AIR_KERNEL_CACHE"
_PACKAGE = Path(__file__).resolve().parent


@dataclasses.dataclass
class CacheCounts:
    reused: int = 0  # served by the in-process memo
    loaded: int = 0  # read from the cache folder
    parsed: int = 0  # built by the TVMScript parser

    def since(self, earlier: CacheCounts) -> CacheCounts:
        return CacheCounts(self.reused - earlier.reused, self.loaded - earlier.loaded, self.parsed - earlier.parsed)


COUNTS = CacheCounts()
_memo: dict[str, PrimFunc] = {}


def cache_folder() -> Path | None:
    configured = os.environ.get(CACHE_ENV)
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "air" / "kernels"


def counts() -> CacheCounts:
    return dataclasses.replace(COUNTS)


def summary(since: CacheCounts) -> str:
    """One line for the build's stage log: what the kernels since `since` cost."""
    c = COUNTS.since(since)
    return f"kernel cache: {c.loaded} loaded, {c.parsed} parsed, {c.reused} reused ({cache_folder() or 'off'})"


def cached_kernel(builder):
    """Decorate a kernel builder: equal arguments give the same PrimFunc, parsed once."""
    name = f"{builder.__module__}.{builder.__qualname__}"
    signature = inspect.signature(builder)

    @functools.wraps(builder)
    def build(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = f"{name}({', '.join(f'{k}={_canonical(v)}' for k, v in bound.arguments.items())})"
        func = _memo.get(key)
        if func is not None:
            COUNTS.reused += 1
            return func
        func = _load_or_parse(key, lambda: builder(*args, **kwargs))
        _memo[key] = func
        return func

    return build


def _load_or_parse(key: str, parse) -> PrimFunc:
    folder = cache_folder()
    path = None if folder is None else folder / f"{_entry_name(key)}.json"
    func = None if path is None else _read_entry(path, key)
    if func is not None:
        COUNTS.loaded += 1
        return func
    func = parse()
    COUNTS.parsed += 1
    if path is not None:
        _write_entry(path, key, func)
    return func


def _entry_name(key: str) -> str:
    return hashlib.sha256(_environment().encode() + b"\0" + key.encode()).hexdigest()[:40]


def _read_entry(path: Path, key: str) -> PrimFunc | None:
    try:
        if not _private(os.stat(path.parent)):
            return None
        with open(path, "rb") as f:
            if not _private(os.fstat(f.fileno())):
                return None
            entry = json.loads(f.read())
        text = entry["function"]
        if entry["key"] != key or entry["sha256"] != hashlib.sha256(text.encode()).hexdigest():
            return None
        func = tvm.ir.load_json(text)
    except Exception:  # any unreadable, truncated or foreign entry is parsed again
        return None
    if not isinstance(func, PrimFunc) or [p.name for p in func.params] != entry.get("params"):
        return None
    return func


def _write_entry(path: Path, key: str, func: PrimFunc) -> None:
    text = tvm.ir.save_json(func)
    entry = {"key": key, "params": [p.name for p in func.params],
             "sha256": hashlib.sha256(text.encode()).hexdigest(), "function": text}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(os.stat(path.parent)):
            return
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".entry-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(entry))
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:  # a read-only or full disk: the build goes on without storing
        pass


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _canonical(value) -> str:
    """A stable text for one builder argument, equal across processes for equal values."""
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, Target):
        return f"Target({_canonical(value.export())})"
    if isinstance(value, Mapping):
        return f"{{{', '.join(sorted(f'{_canonical(k)}: {_canonical(v)}' for k, v in value.items()))}}}"
    if isinstance(value, Sequence):
        return f"[{', '.join(map(_canonical, value))}]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ", ".join(f"{f.name}={_canonical(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__qualname__}@{_file_digest(inspect.getsourcefile(type(value)))}({fields})"
    raise TypeError(f"kernel builder argument of type {type(value).__name__} has no cache key")


# Compiler modules outside this package whose functions the builders call (attention: rope.magnitude).
_USED_MODULES = (_PACKAGE.parent / "rope.py",)


@functools.cache
def _environment() -> str:
    used = ", ".join(f"{path.name} {_file_digest(str(path))}" for path in _USED_MODULES)
    return (f"python {sys.version_info[0]}.{sys.version_info[1]}, tvm {tvm.__version__}, "
            f"tvm-ffi {tvm_ffi.__version__}, kernels {sources_digest(_PACKAGE)}, {used}")


def sources_digest(package: Path) -> str:
    """One digest of every .py file in `package` (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
