"""Filesystems asked without keeping the caller waiting: stat or statvfs of a network
filesystem whose server is gone waits in the kernel, as long as it likes."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from jlservice.errors import NotAnswering

T = TypeVar("T")
ANSWER_WITHIN_S = 3.0  # a configured directory that does not answer by then is given up on

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


class OneThread:
    """Calls on one filesystem made in one thread of its own. A call that takes longer
    than `timeout` is given up (errors.NotAnswering); no new one is made while it still
    hangs, so a dead server costs one thread, however long it stays dead."""

    def __init__(self) -> None:
        self._asked: queue.SimpleQueue[Callable[[], Any]] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[Any, OSError | None]] = queue.SimpleQueue()
        self._waiting = False  # for an answer given up on
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """fn()'s result; its OSError, or errors.NotAnswering."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="jlservice-filesystem")
            self._thread.daemon = True
            self._thread.start()
        if self._waiting:
            try:
                self._answers.get_nowait()  # stale: the filesystem answered after all
            except queue.Empty:
                raise NotAnswering("still no answer to the last call") from None
            self._waiting = False
        self._asked.put(fn)
        try:
            result, error = self._answers.get(timeout=timeout)
        except queue.Empty:
            self._waiting = True
            raise NotAnswering(f"no answer within {timeout:g} s") from None
        if error is not None:
            raise error
        return result

    def _serve(self) -> None:
        while True:
            fn = self._asked.get()
            try:
                self._answers.put((fn(), None))
            except OSError as exc:
                self._answers.put((None, exc))


_DIRS: dict[str, OneThread] = {}  # the directories asked about: a notebook dir or two


def stat(path: str | Path, timeout: float) -> os.stat_result:
    """os.stat of a directory someone configured, waiting at most `timeout`. Raises its
    OSError, or errors.NotAnswering."""
    key = str(path)
    return _DIRS.setdefault(key, OneThread()).call(lambda: os.stat(key), timeout)


def statvfs(path: str | Path, timeout: float) -> os.statvfs_result:
    """os.statvfs in the same thread as stat(path) (the same filesystem)."""
    key = str(path)
    return _DIRS.setdefault(key, OneThread()).call(lambda: os.statvfs(key), timeout)


def not_answering(path: str | Path) -> str:
    return (
        f"{path} does not answer within {ANSWER_WITHIN_S:g} s (a network filesystem whose "
        "server is gone?): check that filesystem (`stat` it from a shell)"
    )


def read_space(path: str | Path, timeout: float) -> Space | None:
    """None when the filesystem did not answer in time, or the path is gone."""
    try:
        st = statvfs(path, timeout)
    except OSError:
        return None
    return Space(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def _size(count: int) -> str:
    return f"{count / 2**20:.0f} MiB" if count < 2**30 else f"{count / 2**30:.1f} GiB"
