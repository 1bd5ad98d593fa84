"""Room kept on the runtime dir's filesystem for the next start, given up when it fills.

/run is a small tmpfs that anything on the machine can fill. A restart of JupyterLab needs a
little room there: the kernel handover jlservice writes, and the files JupyterLab writes as
it starts (`jpserver-<pid>-open.html` cannot be turned off, and a failure to write it ends
JupyterLab). jlservice holds a 1 MiB file in JupyterLab's private dir while there is space,
and frees it when the filesystem is full, so crash-restarts go on with the secrets it holds.
"""

from __future__ import annotations

import os
from pathlib import Path

SIZE = 1 << 20
NAME = "reserve"
_TAKE_BACK_AT = 4 * SIZE  # free space before holding it again: room left for others


def make_room(private_dir: Path) -> None:
    """Before anything is written for a start or a stop: free the reserve when the disk is
    full, or hold it again once there is room. Called by the supervisor's loop alone, once
    the log is set up (never by `jlservice run`'s first start, made before its imports)."""
    from jlservice import log

    logger = log.get("jlservice.start")
    try:
        st = os.statvfs(private_dir)
    except OSError:  # not made yet: the start that makes it says why if it cannot
        return
    free = st.f_bavail * st.f_frsize
    path = private_dir / NAME
    held = os.path.lexists(path)
    if held and free < SIZE:
        try:
            path.unlink()
        except OSError:  # not a file of ours after all (a directory someone made there)
            return
        logger.warning(
            "runtime_disk_full",
            path=str(private_dir),
            free_bytes=free,
            effect=f"released jlservice's {SIZE >> 20} MiB reserve there so JupyterLab can "
            "restart; free space on that filesystem (df -h) before it fills again",
        )
    elif not held and free >= _TAKE_BACK_AT and _hold(path):
        logger.info("runtime_disk_reserve_held", path=str(path), size_bytes=SIZE)


def _hold(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, SIZE)
    except OSError:  # no room after all, or no way to reserve it here: none held
        path.unlink(missing_ok=True)
        return False
    finally:
        os.close(fd)
    return True
