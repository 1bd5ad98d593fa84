"""Ports, waiting and processes, for every helper and for bench/ (stdlib and psutil only)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from jlservice.start.launcher import PRIVATE_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int | psutil.Process) -> bool:
    """Whether it runs (not a zombie). Given a psutil.Process, whether that very process
    does: a suite makes pids wrap (pid_max is often 32768), and a pid checked minutes after
    it was seen may be another process's."""
    try:
        process = pid if isinstance(pid, psutil.Process) else psutil.Process(pid)
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (default: our environment) less PRIVATE_ENV, plus `extra`."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in PRIVATE_ENV}
    env.update(extra)
    return env


def stop(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int:
    """Send `sig` (if it still runs), SIGKILL after `timeout` s; its exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Processes:
    """Processes recorded by pid and start time, so that clean-up never signals a reused pid."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}  # pid -> create_time

    def remember(self, *pids: int | None) -> None:
        for pid in pids:
            if pid:
                with contextlib.suppress(psutil.Error):
                    self.seen.setdefault(pid, psutil.Process(pid).create_time())

    def running(self) -> list[int]:
        """The recorded processes that still run (zombies do not)."""
        alive = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive

    def kill(self) -> list[int]:
        """SIGKILL those that still run; their pids."""
        left = self.running()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left
