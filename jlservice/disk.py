"""How much room a filesystem has left, read without keeping the caller waiting: statvfs of
a network filesystem whose server is gone waits in the kernel, as long as it likes."""

from __future__ import annotations

import os
import queue
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
    """statvfs in one thread of its own. A reading that takes longer than `timeout` is given
    up (None); no new one is asked for while it still hangs, so a dead server costs one
    thread, however long it stays dead."""

    def __init__(self) -> None:
        self._asked: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[Space | None] = queue.SimpleQueue()
        self._waiting = False  # for an answer given up on
        self._thread: threading.Thread | None = None

    def read(self, path: str, timeout: float) -> Space | None:
        """None when the filesystem did not answer in time, or the path is gone."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="jlservice-statvfs")
            self._thread.daemon = True
            self._thread.start()
        if self._waiting:
            try:
                self._answers.get_nowait()  # stale: the filesystem answered after all
            except queue.Empty:
                return None  # still hangs
            self._waiting = False
        self._asked.put(path)
        try:
            return self._answers.get(timeout=timeout)
        except queue.Empty:
            self._waiting = True
            return None

    def _serve(self) -> None:
        while True:
            path = self._asked.get()
            try:
                self._answers.put(space(path))
            except OSError:
                self._answers.put(None)


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count < 2**30 else f"{count / 2**30:.1f} GiB"
