"""Publishing a finished folder in one step: a staging folder renamed into place.

Readers see either no folder, the old whole one, or the new whole one: never a part.
Used by air-build for bundles and by air-run for unpacked archives.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: Path, output: Path) -> None:
    """Rename `staging` to `output`, replacing an existing `output` whole."""
    os.chmod(staging, 0o755)
    if not output.exists():
        os.rename(staging, output)
    else:
        retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        os.rename(output, retired / "bundle")
        os.rename(staging, output)
        shutil.rmtree(retired, ignore_errors=True)
    fsync_folder(output.parent)
