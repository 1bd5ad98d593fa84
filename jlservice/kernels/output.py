"""Where every kernel writes its stdout and stderr: a FIFO jlservice reads for as long as it runs.

A kernel inherits its output from the JupyterLab that starts it. Were that JupyterLab's own
pipe, a kernel kept after its death would meet a pipe nobody reads: blocked writes, or
SIGPIPE for whatever it started. So JupyterLab hands its kernels the FIFO in its private
dir (start.private_dir makes it, the lab user's), and jlservice holds it open from its
first start to its exit, read and write (so it never reads an end of file between two
JupyterLabs), and logs each line as `kernel_output`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from jlservice.supervisor.lab_output import LabOutput


class KernelLines(LabOutput):
    event = "kernel_output"


class KernelOutput:
    def __init__(self) -> None:
        self._transport: asyncio.BaseTransport | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the FIFO held

    async def hold(self, path: Path) -> None:
        """Read the FIFO at `path` (again, if it was made anew: another lab user)."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        st = os.fstat(fd)
        self.close()
        pipe = open(fd, "rb", buffering=0)  # noqa: SIM115 - the transport owns it
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_read_pipe(
            lambda: KernelLines(None, lambda: None), pipe
        )
        self._identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(OSError):
                self._transport.close()
        self._transport = None
        self._identity = None
