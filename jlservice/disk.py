"""How much room a filesystem has left, read without keeping the caller waiting: statvfs of
a network filesystem whose server is gone waits in the kernel, as long as it likes."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import NamedTuple

LOW_FRACTION = 0.05  # "low" below 5 % of the filesystem free…
LOW_BYTES = 10 * 2**30  # …or below 10 GiB, whichever is less (a 10 TB disk is not full at 5 %)


class Space(NamedTuple):
    available: int  # bytes an unprivileged user (the lab user) may still write
    size: int

    @property
    def low(self) -> bool:
        return self.available < min(LOW_FRACTION * self.size, LOW_BYTES)

    def describe(self) -> str:
        share = self.available / self.size if self.size else 0.0
        return f"{_size(self.available)} free of {_size(self.size)} ({share:.1%})"


def space(path: str | Path) -> Space:
    """Raises OSError (the path is gone, or no filesystem answers)."""
    st = os.statvfs(path)
    return Space(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


class SpaceReader:
    """statvfs in a thread of its own. A reading that takes longer than `timeout` is given
    up (None); no new one starts while it still hangs, so a dead server costs one thread."""

    def __init__(self) -> None:
        self._reading: threading.Thread | None = None

    def read(self, path: str, timeout: float) -> Space | None:
        """None when the filesystem did not answer in time, or the path is gone."""
        if self._reading is not None and self._reading.is_alive():
            return None
        found: list[Space] = []

        def read() -> None:
            with contextlib.suppress(OSError):
                found.append(space(path))

        self._reading = threading.Thread(target=read, name="jlservice-statvfs", daemon=True)
        self._reading.start()
        self._reading.join(timeout)
        return found[0] if found else None


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count < 2**30 else f"{count / 2**30:.1f} GiB"
