"""One-file bundles for copying to a device: a plain tar of the bundle folder.

`air-build pack` writes it; `air-run` accepts it directly and unpacks it once, next to the
archive (a later run reuses the unpacked folder when its manifest is the archive's). Every
file's hash is checked when the bundle is loaded, as for a folder.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from air.errors import AirError

from .manifest import MANIFEST_NAME

SUFFIX = ".air"


def is_archive(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def pack(bundle: Path, archive: Path) -> None:
    if not (bundle / MANIFEST_NAME).is_file():
        raise AirError(f"{bundle}: not a bundle (no {MANIFEST_NAME})")
    fd, staging = tempfile.mkstemp(prefix=f".{archive.name}.", dir=archive.parent)
    os.close(fd)
    try:
        with tarfile.open(staging, "w") as tar:
            tar.add(bundle / MANIFEST_NAME, arcname=MANIFEST_NAME)  # first, so it can be read cheaply
            for path in sorted(bundle.rglob("*")):
                if path.is_file() and path.name != MANIFEST_NAME:
                    tar.add(path, arcname=str(path.relative_to(bundle)))
        os.chmod(staging, 0o644)
        os.replace(staging, archive)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def _archive_manifest(archive: Path) -> bytes:
    with tarfile.open(archive) as tar:
        try:
            member = tar.getmember(MANIFEST_NAME)
        except KeyError:
            raise AirError(f"{archive}: archive holds no {MANIFEST_NAME}") from None
        return tar.extractfile(member).read()


def unpack(archive: Path) -> Path:
    """The bundle folder for `archive`, unpacked beside it on first use."""
    target = archive.with_name(archive.name.removesuffix(SUFFIX) + ".bundle")
    try:
        manifest = _archive_manifest(archive)
    except tarfile.TarError as e:
        raise AirError(f"{archive}: damaged archive ({e})") from None
    if (target / MANIFEST_NAME).is_file() and (target / MANIFEST_NAME).read_bytes() == manifest:
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=archive.parent))
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    raise AirError(f"{archive}: archive member '{member.name}' is not a plain file")
            tar.extractall(staging, filter="data")  # refuses absolute paths and '..'
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
    except (tarfile.TarError, OSError) as e:
        raise AirError(f"{archive}: cannot unpack ({e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
