"""The handover file: what jlservice (root) tells the next JupyterLab about kernels.

Written by jlservice alone, in JupyterLab's private dir, and read by the kernel manager
inside JupyterLab (jlservice.inlab.kernels): the kernels to adopt at start-up, and whether
to leave its kernels running at its exit — true only from just before jlservice stops it
for a restart, so that a JupyterLab whose jlservice died (the parent-death signal is a
SIGTERM too) shuts them down. jlservice never reads it back: what it keeps or ends it
decides from /proc (kernels.verify).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

from jlservice import files
from jlservice.start.launcher import Launch


class Kernel(NamedTuple):
    id: str
    pid: int
    started: int  # procfs.start_ticks: the same pid later is another process


def write(launch: Launch, keep: bool, kernels: Iterable[Kernel] = ()) -> None:
    """`keep`: JupyterLab leaves its kernels running when it exits (jlservice keeps them).
    Not fsynced: kernels do not outlive the machine, so what a power cut loses is of no use."""
    if not launch.keep_kernels:
        launch.handover_file.unlink(missing_ok=True)
        return
    data = {"keep": keep, "kernels": [{"id": k.id, "pid": k.pid} for k in kernels]}
    owner = (launch.account.uid, launch.account.gid)
    body = json.dumps(data).encode()
    files.write_atomic(launch.handover_file, body, owner=owner, durable=False)
