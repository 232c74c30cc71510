"""Verified-once starts: remember each bundle file's sha256 under its on-disk identity.

An entry says only "the file with this device, inode, size, mtime and ctime had this
sha256"; the manifest's hashes (and its signature, checked at every start) still decide
whether that is the right hash. Any write to a file changes its ctime (which no user can
set back), so a changed file misses the cache and is hashed again. One cache file per
bundle folder and manifest (named by the sha256 of both), in `$AIR_VERIFIED_CACHE` or
`$XDG_CACHE_HOME/air/verified` (default `~/.cache/air/verified`): outside the bundle, so
whoever ships a bundle cannot ship its cache. The folder is 0700 and each file 0600; a
folder or file that is not this user's or that others may write is ignored, and so is an
entry whose identity does not match the file. The cache is as trustworthy as the account
that owns it (that account can also replace the trusted keys).

A first start hashes every file. air-run starts that in a background thread before it imports
TVM (`hash_in_background`): hashlib releases the GIL, so on a second core the hashing overlaps
the import. The thread only computes digests, of the files the cache does not remember; the
manifest (its signature checked first) still decides, and a digest is used only for a file
whose identity is unchanged since the thread read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
from pathlib import Path

from .manifest import sha256_file
from .signing import manifest_digest

CACHE_ENV = "AIR_VERIFIED_CACHE"


def cache_folder() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "air" / "verified"


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)


class VerificationCache:
    """A memo of sha256_file for one bundle folder; `sha256` is a drop-in for it."""

    def __init__(self, root: Path, manifest: dict, force: bool = False):
        key = hashlib.sha256(f"{manifest_digest(manifest)}\0{root.resolve()}".encode()).hexdigest()
        self.path = cache_folder() / f"{key[:32]}.json"
        self.entries = {} if force else self._read()
        self.hashed = 0
        self.cached = 0

    def _read(self) -> dict:
        try:
            if not _private(os.stat(self.path.parent)):
                return {}
            with open(self.path, "rb") as f:
                if not _private(os.fstat(f.fileno())):
                    return {}
                entries = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def sha256(self, path: Path) -> str:
        before = os.stat(path)
        entry = self.entries.get(str(path))
        if isinstance(entry, dict) and entry.get("identity") == _identity(before) and isinstance(entry.get("sha256"), str):
            self.cached += 1
            return entry["sha256"]
        digest = _background_digest(path, before) or sha256_file(path)
        self.hashed += 1
        if _identity(os.stat(path)) == _identity(before):  # unchanged while it was read
            self.remember(path, before, digest)
        return digest

    def remember(self, path: Path, st: os.stat_result, digest: str) -> None:
        self.entries[str(path)] = {"identity": _identity(st), "sha256": digest}

    def save(self) -> None:
        """Write the entries (best effort: a read-only home only costs the re-hash)."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private(os.stat(self.path.parent)):
                return
            fd, staging = tempfile.mkstemp(prefix=".entries.", dir=self.path.parent)  # mode 0600
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.entries, f)
            os.replace(staging, self.path)
        except OSError:
            os.unlink(staging)


_background: dict[str, tuple[list[int], str]] = {}  # path -> (identity when read, sha256)
_background_threads: list[threading.Thread] = []


def _hash_misses(root: Path, manifest: dict) -> None:
    try:
        cache = VerificationCache(root, manifest)
        records = list(manifest["files"].items())
    except Exception:  # noqa: BLE001 - best effort: the main thread verifies and reports
        return
    for relpath, record in records:
        try:
            path = root / relpath
            before = os.stat(path)
            if not stat.S_ISREG(before.st_mode) or before.st_size != record["size"]:
                continue  # verify_files refuses it without reading it (a device or FIFO could never end)
            entry = cache.entries.get(str(path))
            if isinstance(entry, dict) and entry.get("identity") == _identity(before):
                continue  # remembered: the main thread takes it from the cache
            digest = sha256_file(path)
            if _identity(os.stat(path)) == _identity(before):
                _background[str(path)] = (_identity(before), digest)
        except (OSError, TypeError, KeyError):
            continue


def hash_in_background(args: list[str]) -> threading.Thread | None:
    """Start hashing the files of the first argument that is a bundle folder (best effort)."""
    for arg in args:
        root = Path(arg)
        try:
            if not stat.S_ISREG(os.stat(root / "manifest.json").st_mode):
                continue
            manifest = json.loads((root / "manifest.json").read_bytes())
            if not all(not os.path.isabs(p) and ".." not in Path(p).parts for p in manifest["files"]):
                return None  # verify_files refuses such a manifest
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        thread = threading.Thread(target=_hash_misses, args=(root, manifest), daemon=True)
        thread.start()
        _background_threads.append(thread)
        return thread
    return None


def _background_digest(path: Path, st: os.stat_result) -> str | None:
    """A background thread's digest of `path` if it read the file with identity `st`."""
    for thread in _background_threads:
        thread.join()
    entry = _background.get(str(path))
    return entry[1] if entry and entry[0] == _identity(st) else None
