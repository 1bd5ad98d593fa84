"""Filesystems asked without keeping the caller waiting: stat or statvfs of a network
filesystem whose server is gone waits in the kernel, as long as it likes."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
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
    """Calls on one filesystem made one after the other in a thread of its own; each
    caller waits for its own answer, at most `timeout` (then errors.NotAnswering). Once a
    caller has given up, later calls are refused at once until that call is answered, so a
    dead server costs one thread and no caller more than its timeout, however long it stays
    dead."""

    def __init__(self, name: str = "jlservice-filesystem") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._asked: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._given_up: Future[Any] | None = None  # the last call a caller stopped waiting for
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[], T], timeout: float) -> T:
        """fn()'s result, or its exception; errors.NotAnswering after `timeout`."""
        answer = self.submit(fn)
        try:
            return answer.result(timeout)
        except FutureTimeout:
            self.gave_up(answer)
            raise NotAnswering(f"no answer within {timeout:g} s") from None

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """fn() asked of the thread (a daemon: one that never answers does not keep the
        process from exiting); errors.NotAnswering at once while an earlier call given up
        on is not answered."""
        with self._lock:
            if self._given_up is not None and not self._given_up.done():
                raise NotAnswering("still no answer to an earlier call")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self._name)
                self._thread.daemon = True
                self._thread.start()
            answer: Future[T] = Future()
            self._asked.put((fn, answer))
        return answer

    def gave_up(self, answer: Future[Any]) -> None:
        """A caller stopped waiting for `answer`: refuse calls until it is answered."""
        with self._lock:
            self._given_up = answer

    def close(self) -> None:
        """Let the thread end once it has answered what it was asked."""
        self._asked.put(None)

    def hung(self) -> bool:
        with self._lock:
            return self._given_up is not None and not self._given_up.done()

    def _serve(self) -> None:
        while (asked := self._asked.get()) is not None:
            fn, answer = asked
            try:
                answer.set_result(fn())
            except BaseException as exc:  # whatever it is, it is the caller's
                answer.set_exception(exc)


_DIRS: dict[str, OneThread] = {}  # the paths asked about: a notebook dir, a command or two
_DIRS_LOCK = threading.Lock()
_KEEP_DIRS = 8  # beyond that, the threads of paths that answer are let go


def call(path: str | Path, fn: Callable[[], T], timeout: float) -> T:
    """fn() (which looks at `path`) in the thread that asks `path`'s filesystem, waiting at
    most `timeout`. Raises what fn raises, or errors.NotAnswering."""
    key = str(path)
    with _DIRS_LOCK:
        thread = _DIRS.get(key)
        if thread is None:
            if len(_DIRS) >= _KEEP_DIRS:  # paths of past configurations: keep the hung ones
                for old in [k for k, t in _DIRS.items() if not t.hung()]:
                    _DIRS.pop(old).close()
            thread = _DIRS[key] = OneThread()
    return thread.call(fn, timeout)


def stat(path: str | Path, timeout: float) -> os.stat_result:
    """os.stat of a directory someone configured, waiting at most `timeout`."""
    return call(path, lambda: os.stat(path), timeout)


def statvfs(path: str | Path, timeout: float) -> os.statvfs_result:
    """os.statvfs of `path`, waiting at most `timeout`."""
    return call(path, lambda: os.statvfs(path), timeout)


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
