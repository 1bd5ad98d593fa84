"""Small filesystems a test mounts, fills and frees (as root)."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(mount: Path, size: str = "2m", mode: str = "0755") -> Iterator[Path]:
    """A tmpfs of `size` on `mount` (made if missing), unmounted afterwards."""
    mount.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", mount], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte; the file that fills it."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler
