"""Which processes a dead JupyterLab left running are this service's kernels.

Decided from /proc by jlservice alone, never from a file the lab user can write. A kept
kernel is a direct child of the supervisor that is not the warm parent's (so an orphan
re-parented to it, the child subreaper, from below: a dead JupyterLab's kernel, or one kept
before), running as the lab user (real and effective uid), the leader of its own session
(as jupyter_client starts kernels), whose command line names a connection file
`kernel-<uuid>.json` in JupyterLab's private runtime dir that exists there as the lab
user's regular file. For a kernel id named by two such processes, the older is kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

import psutil

from jlservice import procfs
from jlservice.kernels.handover import Kernel

_KERNEL_FILE = re.compile(
    r"kernel-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.json"
)


def surviving(runtime_dir: Path, uid: int, spare: Iterable[int] = ()) -> list[Kernel]:
    """The verified kernels among the supervisor's children, but `spare` (the warm parent)."""
    dirs = {str(runtime_dir), os.path.realpath(runtime_dir)}
    spared = set(spare)
    found: dict[str, Kernel] = {}
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    for proc in children:
        if proc.pid in spared:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            kernel_id = _kernel_id(proc, dirs, uid, runtime_dir)
            if kernel_id is None:
                continue
            started = procfs.start_ticks(proc.pid)
            if started is None:
                continue
            kernel = Kernel(kernel_id, proc.pid, started)
            if kernel_id not in found or kernel.started < found[kernel_id].started:
                found[kernel_id] = kernel
    return sorted(found.values())


def _kernel_id(proc: psutil.Process, dirs: set[str], uid: int, runtime_dir: Path) -> str | None:
    uids = proc.uids()
    if uids.real != uid or uids.effective != uid or os.getsid(proc.pid) != proc.pid:
        return None
    if proc.status() == psutil.STATUS_ZOMBIE:
        return None
    for arg in proc.cmdline():
        directory, _, name = arg.rpartition("/")
        match = _KERNEL_FILE.fullmatch(name)
        if match and directory in dirs and _is_connection_file(runtime_dir / name, uid):
            return match[1]
    return None


def _is_connection_file(path: Path, uid: int) -> bool:
    """The lab user's regular file (lstat: a link is not followed, nor accepted)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == uid


def pidfds_of(pid: int) -> set[int]:
    """The processes `pid` holds a pidfd of, as root reads /proc/PID/fdinfo: how the next
    JupyterLab adopts a kernel (it waits for the kernel's exit on one). Asked of /proc, not
    of JupyterLab's API, which a password-only login or a certificate for another name
    keeps jlservice out of."""
    found: set[int] = set()
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except OSError:  # gone
        return found
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            if os.readlink(f"{fds}/{name}") != "anon_inode:[pidfd]":
                continue
            with open(f"/proc/{pid}/fdinfo/{name}") as info:
                for line in info:
                    if line.startswith("Pid:"):
                        found.add(int(line.split()[1]))
    return found
