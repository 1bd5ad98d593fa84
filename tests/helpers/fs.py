"""Small filesystems a test mounts, fills and frees, or hangs (as root); a pipe filled to
the brim."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
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


@contextlib.contextmanager
def hung(mount: Path, owner: tuple[int, int] | None = None) -> Iterator[Path]:
    """A filesystem over `mount` that never answers, as a network filesystem does whose
    server is gone: a FUSE mount whose daemon never reads /dev/fuse, so every lookup through
    it waits in the kernel (killable). For everyone, or (`owner`: uid, gid) a user's own FUSE
    mount, which only that user may enter: root gets EACCES. On exit the connection is closed,
    which fails what still waits, and it is unmounted."""
    fuse = os.open("/dev/fuse", os.O_RDWR)
    try:
        uid, gid = owner or (0, 0)
        who = f"user_id={uid},group_id={gid}" + (",allow_other" if owner is None else "")
        options = f"fd={fuse},rootmode=40000,{who}"
        subprocess.run(
            ["mount", "-t", "fuse", "-o", options, "hung", mount], pass_fds=(fuse,), check=True
        )
        try:
            yield mount
        finally:
            os.close(fuse)
            fuse = -1
            subprocess.run(["umount", "-l", mount], check=True)
    finally:
        if fuse >= 0:
            os.close(fuse)


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


@contextlib.contextmanager
def full_pipe() -> Iterator[int]:
    """The write end of a pipe filled to the last byte, whose read end is never read."""
    read, write = os.pipe()
    flags = fcntl.fcntl(write, fcntl.F_GETFL)
    fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"x" * 4096)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"x")
    # Blocking again (the flag belongs to the pipe's open file, which jlservice shares):
    # jlservice's next write blocks, as on a reader that stopped reading.
    fcntl.fcntl(write, fcntl.F_SETFL, flags)
    try:
        yield write
    finally:
        os.close(write)
        os.close(read)
