"""One-file bundles for copying to a device: a plain tar of the bundle folder.

`air-build pack` writes it (manifest.json first, then manifest.sig when signed); `air-run`
accepts it directly and unpacks it once, beside the archive, into NAME.bundle:

- the manifest (and, with trust configured, its signature) is checked before anything
  is written;
- one unpacker at a time (an flock on a hidden NAME.bundle.lock beside it); a process that
  waited finds the folder the first one published and shares it;
- files go into a hidden staging folder, each checked against the manifest's size and
  sha256 as it is written and fsynced, and the folder is renamed into place only when
  whole: a kill -9 or a full disk leaves no NAME.bundle, only staging that the next
  unpacker removes;
- the hashes computed while writing are remembered (runtime/verified.py), so the first
  start does not hash the files a second time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from air.errors import AirError

from .folders import fsync_folder, publish
from .manifest import MANIFEST_NAME, _inside, parse_manifest
from .signing import SIGNATURE_NAME
from .trust import Trust
from .verified import VerificationCache

SUFFIX = ".air"
_CHUNK = 1 << 22


def is_archive(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def pack(bundle: Path, archive: Path) -> None:
    if not (bundle / MANIFEST_NAME).is_file():
        raise AirError(f"{bundle}: not a bundle (no {MANIFEST_NAME})")
    head = [name for name in (MANIFEST_NAME, SIGNATURE_NAME) if (bundle / name).is_file()]
    fd, staging = tempfile.mkstemp(prefix=f".{archive.name}.", dir=archive.parent)
    os.close(fd)
    try:
        with tarfile.open(staging, "w") as tar:
            for name in head:  # first, so they can be read and checked before the rest
                tar.add(bundle / name, arcname=name)
            for path in sorted(bundle.rglob("*")):
                if path.is_file() and path.name not in head:
                    tar.add(path, arcname=str(path.relative_to(bundle)))
        os.chmod(staging, 0o644)
        os.replace(staging, archive)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def unpacked_folder(archive: Path) -> Path:
    return archive.with_name(archive.name.removesuffix(SUFFIX) + ".bundle")


def unpack(archive: Path, trust: Trust) -> Path:
    """The bundle folder for `archive`, unpacked beside it on first use."""
    target = unpacked_folder(archive)
    try:
        with tarfile.open(archive) as tar:
            head = _read_head(tar, archive)
            manifest = parse_manifest(head[MANIFEST_NAME], f"{archive}: {MANIFEST_NAME}")
            trust.check(manifest, head.get(SIGNATURE_NAME), str(archive))
            with _locked(archive.with_name(f".{target.name}.lock")):
                if _holds(target, head):
                    return target
                _remove_stale(target)
                _unpack_verified(tar, archive, target, manifest, head)
    except tarfile.TarError as e:
        raise AirError(f"{archive}: damaged archive ({e})") from None
    except OSError as e:
        raise AirError(f"{archive}: cannot unpack ({e})") from None
    return target


def _read_head(tar: tarfile.TarFile, archive: Path) -> dict:
    """manifest.json and manifest.sig, read from the archive's first members."""
    head = {}
    for member in tar:
        if member.name not in (MANIFEST_NAME, SIGNATURE_NAME) or member.name in head:
            break
        if not member.isfile() or member.size > 64 << 20:
            raise AirError(f"{archive}: archive member '{member.name}' is not a plain file of sane size")
        head[member.name] = tar.extractfile(member).read()
    if MANIFEST_NAME not in head:
        raise AirError(f"{archive}: archive does not start with {MANIFEST_NAME} (not an air archive)")
    return head


@contextlib.contextmanager
def _locked(path: Path):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise AirError(f"{path}: cannot create the unpack lock ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holds(target: Path, head: dict) -> bool:
    """An unpacked folder of exactly this manifest and signature (folders appear only whole)."""
    for name in (MANIFEST_NAME, SIGNATURE_NAME):
        path = target / name
        if (path.read_bytes() if path.is_file() else None) != head.get(name):
            return False
    return True


def _remove_stale(target: Path) -> None:
    """Staging left by a killed unpacker (none can be running: we hold the lock)."""
    for leftover in target.parent.glob(f".{target.name}.unpack-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _unpack_verified(tar: tarfile.TarFile, archive: Path, target: Path, manifest: dict, head: dict) -> None:
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpack-", dir=target.parent))
        for name, data in head.items():
            _write_file(staging / name, data)
        digests, skipped = {}, set()
        for member in tar:
            if member.name in head and member.name not in skipped:  # read and written already
                skipped.add(member.name)
                continue
            digests[member.name] = _extract_member(tar, member, archive, staging, manifest, digests)
        missing = sorted(set(manifest["files"]) - set(digests))
        if missing:
            raise AirError(f"{archive}: archive lacks bundle file '{missing[0]}'")
        for folder in sorted({p.parent for p in staging.rglob("*")}, key=lambda p: -len(p.parts)):
            fsync_folder(folder)
        publish(staging, target)
    except OSError as e:
        raise AirError(_write_failure(archive, manifest, e)) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    cache = VerificationCache(target, manifest)
    for relpath, (st, digest) in digests.items():
        cache.remember(target / relpath, st, digest)
    cache.save()


def _extract_member(tar, member, archive: Path, staging: Path, manifest: dict, done: dict):
    """Write one bundle file, checking it against the manifest as it goes; (stat, sha256)."""
    record = manifest["files"].get(member.name)
    if record is None or member.name in done:
        raise AirError(f"{archive}: cannot unpack: member '{member.name}' is not a bundle file of the manifest "
                       "(or appears twice)")
    if not member.isfile():
        raise AirError(f"{archive}: cannot unpack: member '{member.name}' is not a plain file")
    if member.size != record["size"]:
        raise AirError(f"{archive}: bundle file '{member.name}' has {member.size} bytes, manifest says "
                       f"{record['size']} (truncated or replaced)")
    path = _inside(staging, member.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    source = tar.extractfile(member)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            digest.update(chunk)
            _write_all(fd, chunk)
        if digest.hexdigest() != record["sha256"]:
            raise AirError(f"{archive}: bundle file '{member.name}' does not match its sha256 in the manifest (modified)")
        os.fsync(fd)
        return os.fstat(fd), digest.hexdigest()
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_failure(archive: Path, manifest: dict, e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        need = sum(r["size"] for r in manifest["files"].values())
        return (f"{archive}: cannot unpack: {e.strerror} in {archive.parent} (the bundle needs "
                f"{need / 1e6:.1f} MB); nothing was unpacked")
    return f"{archive}: cannot unpack ({e})"
