"""Reap every child of the supervisor, and end whatever a dead JupyterLab left behind.

The supervisor is a child subreaper, so orphaned kernels (and anything they started) are
re-parented to it. One SIGCHLD handler reaps them all with waitpid(-1, WNOHANG); the exit of
a watched pid (JupyterLab) resolves its future at once — no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from jlservice import log, state
from jlservice.deadline import within

logger = log.get("jlservice.children")

KILL_WAIT_S = 5.0  # after SIGKILL: longer means the process cannot die now (frozen, D state)
Found = Callable[[], list[psutil.Process]]  # what a sweep ends, looked for on each pass


@dataclass(frozen=True)
class ExitStatus:
    pid: int
    code: int | None
    signal: int | None

    @classmethod
    def from_wait_status(cls, pid: int, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(pid, None, os.WTERMSIG(status))
        return cls(pid, os.waitstatus_to_exitcode(status), None)

    def describe(self) -> str:
        return state.describe_exit(self.code, self.signal)


class Reaper:
    def __init__(self, stuck_ended: Callable[[list[int]], None] = lambda stuck: None) -> None:
        """`stuck_ended(stuck)`: a process SIGKILL had not ended has exited at last (thawed);
        `stuck`: those still left."""
        self._stuck_ended = stuck_ended
        self._watched: dict[int, asyncio.Future[ExitStatus]] = {}
        # While a warm start is in flight (expect_adoption() until the next watch()), exits
        # nobody watched: the new JupyterLab becomes our child before the warm parent has
        # told us its pid, and may exit that soon.
        self._recent: dict[int, ExitStatus] | None = None
        self._changed = asyncio.Event()
        # Processes SIGKILL did not end (frozen, stuck in the kernel): pid → start time.
        self.stuck: dict[int, float] = {}

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()  # children that exited before the handler existed

    def watch(self, pid: int) -> asyncio.Future[ExitStatus]:
        """A future resolved with `pid`'s exit status. Call right after starting `pid`, or,
        for a process another one started for us, between expect_adoption() and any await."""
        if pid in self._watched:  # its first watcher would never learn of the exit
            raise ValueError(f"pid {pid} is watched already")
        future = asyncio.get_running_loop().create_future()
        recent, self._recent = self._recent, None
        if recent is not None and pid in recent:
            future.set_result(recent[pid])
        else:
            self._watched[pid] = future
        return future

    def watching(self, pid: int) -> bool:
        return pid in self._watched

    def expect_adoption(self) -> None:
        """From now until the next watch(), remember exits nobody watched."""
        self._recent = {}

    def reaped(self, pid: int) -> bool:
        """Whether `pid` exited as our child, unwatched, since expect_adoption()."""
        return self._recent is not None and pid in self._recent

    def reap(self) -> None:
        stuck = len(self.stuck)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            exit_status = ExitStatus.from_wait_status(pid, status)
            if self.stuck.pop(pid, None) is not None:
                logger.info("stuck_process_ended", pid=pid)
            future = self._watched.pop(pid, None)
            if future is not None and not future.done():
                future.set_result(exit_status)
            else:
                logger.debug("orphan_reaped", pid=pid)
                if self._recent is not None:
                    self._recent[pid] = exit_status
        self._changed.set()
        if len(self.stuck) != stuck:
            self._stuck_ended(sorted(self.stuck))

    def mark_stuck(self, procs: Iterable[psutil.Process]) -> None:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                self.stuck[proc.pid] = proc.create_time()

    def is_stuck(self, proc: psutil.Process) -> bool:
        try:
            return self.stuck.get(proc.pid) == proc.create_time()
        except psutil.Error:
            return False

    async def wait_change(self, timeout: float) -> None:
        """Wait until some child exits (or `timeout` passes)."""
        self._changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await within(timeout, self._changed.wait())


def descendants(spare: Iterable[int] = ()) -> list[psutil.Process]:
    """Every process below the supervisor (orphans of a dead JupyterLab included), except
    the processes in `spare` and theirs."""
    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    spared = set(spare)
    for proc in procs:  # parents come before their children
        with contextlib.suppress(psutil.Error):
            if proc.ppid() in spared:
                spared.add(proc.pid)
    return [p for p in procs if p.pid not in spared]


def kernels_of(pids: Iterable[int]) -> Found:
    """What ending the kernels `pids` ends, looked for again on each pass: their
    descendants, and what runs in their sessions (a kernel is a session's leader: its
    children orphaned when it died first). Once found, a process stays theirs by its
    identity (pid and start time), re-parented or not; a process another kernel starts
    meanwhile, re-parented to the supervisor, is none of theirs and is left alone."""
    began = time.time()
    theirs: dict[int, float] = {}  # pid → start time
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            theirs[pid] = psutil.Process(pid).create_time()
    sessions = set()
    for pid in theirs:
        with contextlib.suppress(OSError):
            sessions.add(os.getsid(pid))
    sessions.discard(os.getsid(0))  # one that never left ours: its descendants only

    def is_theirs(proc: psutil.Process, by_pid: dict[int, psutil.Process]) -> bool:
        created = proc.create_time()
        if theirs.get(proc.pid) == created:
            return True
        parent = by_pid.get(proc.ppid())
        if parent is not None and theirs.get(parent.pid) == parent.create_time():
            return True
        # A session's number is a pid: after the last of its processes, a new one may
        # have it; one started since the end began is theirs only through its parent.
        return created <= began and os.getsid(proc.pid) in sessions

    def found() -> list[psutil.Process]:
        try:
            procs = psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
        by_pid = {p.pid: p for p in procs}
        ended = []
        for proc in procs:  # parents come before their children
            with contextlib.suppress(psutil.Error, OSError):
                if is_theirs(proc, by_pid):
                    theirs[proc.pid] = proc.create_time()
                    ended.append(proc)
        return ended

    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
            if sig == signal.SIGTERM:
                proc.send_signal(signal.SIGCONT)  # a stopped process must run to handle it
        except psutil.Error:
            pass


async def sweep(reaper: Reaper, grace: float, found: Found) -> int:
    """End what `found()` returns (`descendants`: every leftover but the warm parent and
    the kept kernels; `kernels_of`: some kernels): SIGTERM, then SIGKILL after `grace`
    seconds. What SIGKILL does not end within KILL_WAIT_S is stuck (frozen, or in
    uninterruptible sleep): logged, remembered, sent SIGKILL again by later sweeps but never
    waited for again.

    Returns how many processes were found. New ones that appear meanwhile (a kernel forking
    while dying) are caught on the next pass.
    """
    procs = found()
    stuck = [p for p in procs if reaper.is_stuck(p)]
    _signal_all(stuck, signal.SIGKILL)  # in case they can die by now
    procs = [p for p in procs if p not in stuck]
    if not procs:
        return 0
    for proc in procs:
        logger.info("leftover_process", pid=proc.pid, name=_name(proc))
    _signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace
    killed = False
    while True:
        live = [p for p in found() if _alive(p) and not reaper.is_stuck(p)]
        if not live:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            if killed:
                reaper.mark_stuck(live)
                logger.error(
                    "leftover_unkillable",
                    pids=[p.pid for p in live],
                    states=[_state(p) for p in live],
                    effect="left behind; jlservice goes on without waiting for them",
                )
                break
            logger.warning("leftover_killed", pids=[p.pid for p in live], grace_s=grace)
            _signal_all(live, signal.SIGKILL)
            killed = True
            deadline = time.monotonic() + KILL_WAIT_S
            continue
        _signal_all([p for p in live if p not in procs], signal.SIGTERM)
        procs.extend(p for p in live if p not in procs)
        # Orphans exit as our children (SIGCHLD); grandchildren whose parent still lives do
        # not wake us, so look again at least every 100 ms.
        await reaper.wait_change(min(left, 0.1))
    return len(procs)


def state_of(pid: int) -> str:
    """The process state letter /proc shows (D: uninterruptible sleep, T: stopped…)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "?"


def _state(proc: psutil.Process) -> str:
    try:
        return proc.status()
    except psutil.Error:
        return "?"


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:120] or proc.name()
    except psutil.Error:
        return "?"
