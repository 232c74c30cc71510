"""Atomic bundle output: everything is written into a hidden staging folder beside the
destination and renamed into place only when complete, so a failed or interrupted build
leaves no half bundle behind (and an existing bundle is replaced only by a whole one)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from air.errors import AirError
from air.runtime.folders import publish
from air.runtime.manifest import MANIFEST_NAME


def _check_replaceable(output: Path) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise AirError(f"{output}: exists and is not a folder; refusing to replace it")
    if any(output.iterdir()) and not (output / MANIFEST_NAME).exists():
        raise AirError(f"{output}: exists and is not a bundle; refusing to replace it")


@contextlib.contextmanager
def staged_bundle(output: Path):
    """Yield a staging folder; on success it becomes `output`, on any failure it is removed."""
    _check_replaceable(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield staging
        publish(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
