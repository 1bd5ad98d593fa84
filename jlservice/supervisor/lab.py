"""One running JupyterLab: its process, its output, its exit, and the probes that watch it.

A Lab reports what happens to it only by posting events (ChildExited, LabReady, LabUnhealthy,
StartTimedOut); the supervisor decides what to do about them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

import psutil

from jlservice import listener, log
from jlservice.config import HealthConfig
from jlservice.deadline import within
from jlservice.start import Started, launcher
from jlservice.supervisor import children, health
from jlservice.supervisor.events import ChildExited, Event, StartTimedOut
from jlservice.supervisor.lab_output import LabOutput

logger = log.get("jlservice.lab")


class Lab:
    def __init__(
        self,
        pid: int,
        output: LabOutput,
        exited: asyncio.Future[children.ExitStatus],
        start_timer: asyncio.TimerHandle,
        ready_probe: asyncio.Task[None],
        started: float,
        began_monotonic: float,
        api_url: str,
        post: Callable[[Event], None],
        reaper: children.Reaper,
    ) -> None:
        self.pid = pid
        self.output = output
        self.exited = exited
        self.started = started  # time.time(), for the metrics
        self._began_monotonic = began_monotonic
        self.ready_at: float | None = None
        self.stop_reason: str | None = None
        self.answering = True  # the last health probe succeeded
        self._start_timer = start_timer
        self._tasks = [ready_probe]
        self._api_url = api_url
        self._post = post
        self._reaper = reaper

    @classmethod
    async def adopt(
        cls,
        started: Started,
        launch: launcher.Launch,
        reaper: children.Reaper,
        post: Callable[[Event], None],
        start_timeout: float,
    ) -> Lab:
        """Take charge of a JupyterLab just started (cold or warm), and wait for it: the Lab
        owns its output pipe from now on."""
        loop = asyncio.get_running_loop()
        pid = started.pid
        exited = reaper.watch(pid)
        exited.add_done_callback(lambda f: post(ChildExited(pid, f.result())))
        printed = asyncio.Event()
        _, output = await loop.connect_read_pipe(
            lambda: LabOutput(pid, printed.set), started.output
        )

        def stranger() -> str | None:
            return listener.stranger_to(launch, pid)

        ready = health.wait_ready(pid, launch.api_url, printed, post, stranger)
        return cls(
            pid,
            output,
            exited,
            start_timer=loop.call_later(start_timeout, post, StartTimedOut(pid)),
            ready_probe=loop.create_task(ready),
            started=started.began,
            began_monotonic=started.began_monotonic,
            api_url=launch.api_url,
            post=post,
            reaper=reaper,
        )

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    def mark_ready(self, settings: Callable[[], HealthConfig]) -> float:
        """JupyterLab answers: watch its health from now on. Returns seconds since spawn (on
        the monotonic clock: a step of the wall clock meanwhile is no part of the start)."""
        self.ready_at = time.time()
        self._start_timer.cancel()
        self._tasks.append(
            asyncio.get_running_loop().create_task(
                health.watch(self.pid, self._api_url, settings, self._probed, self._post)
            )
        )
        return time.monotonic() - self._began_monotonic

    def _probed(self, ok: bool) -> None:
        self.answering = ok

    def cancel_watchers(self) -> None:
        self._start_timer.cancel()
        for task in self._tasks:
            task.cancel()

    async def stop(self, reason: str, timeout: float) -> bool:
        """SIGTERM (JupyterLab shuts its kernels down), SIGKILL after `timeout` seconds.

        False if it still has not exited KILL_WAIT_S after the SIGKILL (frozen, or stuck in
        the kernel): the supervisor goes on without it.
        """
        if self.exited.done():
            return True
        self.stop_reason = self.stop_reason or reason
        self.cancel_watchers()
        logger.info("lab_stopping", pid=self.pid, reason=reason)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
            os.kill(self.pid, signal.SIGCONT)  # a stopped (hung) process must run to exit
        try:
            await within(timeout, asyncio.shield(self.exited))
        except asyncio.TimeoutError:
            logger.warning("lab_stop_timeout", pid=self.pid, timeout_s=timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            try:
                await within(children.KILL_WAIT_S, asyncio.shield(self.exited))
            except asyncio.TimeoutError:
                with contextlib.suppress(psutil.Error):
                    self._reaper.mark_stuck([psutil.Process(self.pid)])
                return False
        return True

    async def drain_output(self) -> str | None:
        """Once the process and its leftovers are gone: its last line (jupyter_server's last
        words, which say why a start failed).

        Kernels inherit JupyterLab's output pipe; with them swept it closes promptly.
        """
        with contextlib.suppress(asyncio.TimeoutError):
            await within(1.0, asyncio.shield(self.output.closed))
        return self.output.last_line
