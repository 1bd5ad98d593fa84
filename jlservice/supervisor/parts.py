"""What the supervisor's state machine drives, as small interfaces.

supervisor.main makes the real ones; tests/unit/supervisor has fakes. Each part speaks back
to the loop only by posting events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from jlservice import state
from jlservice.config import Config
from jlservice.labapi import Endpoint
from jlservice.start import Secrets, Started, launcher
from jlservice.supervisor import reload
from jlservice.supervisor.children import ExitStatus
from jlservice.supervisor.events import Event, KernelsListed
from jlservice.supervisor.publish import Publisher


class Lab(Protocol):
    """One JupyterLab process (supervisor.lab.Lab)."""

    pid: int
    started: float
    ready_at: float | None
    answering: bool
    stop_reason: str | None
    exited: asyncio.Future[ExitStatus]

    @property
    def ready(self) -> bool: ...
    def mark_ready(self, settings: Callable[[], Any]) -> float: ...
    def cancel_watchers(self) -> None: ...
    async def stop(self, reason: str, timeout: float) -> bool: ...  # False: it would not die
    async def drain_output(self) -> str | None: ...


class Starter(Protocol):
    async def start(self, launch: launcher.Launch, secrets: Secrets) -> Started: ...


class WarmKeeper(Protocol):
    """The warm parent (start.warm.keeper.WarmKeeper)."""

    def keep(self, launch: launcher.Launch, enabled: bool) -> None: ...
    def distrust(self, launch: launcher.Launch, problem: str) -> None: ...
    def cold_start_took(self, seconds: float) -> None: ...
    def hurry(self) -> None: ...
    def spare(self) -> set[int]: ...
    def describe(self) -> state.WarmParent | None: ...
    def close(self) -> None: ...


class KernelKeeper(Protocol):
    """Kernels kept across JupyterLab's restarts (kernels.keeper.KernelKeeper)."""

    adopted_total: int
    lost: dict[str, int]

    def prepare(self, launch: launcher.Launch) -> bool: ...  # True: sweep before the start
    def ready(self, endpoint: Endpoint) -> None: ...
    def lab_stopping(self, launch: launcher.Launch, wanted: bool) -> None: ...
    def exited(
        self, launch: launcher.Launch, wanted: bool, spare: set[int], grace: float
    ) -> set[int]: ...
    def stopping(self) -> None: ...
    def listed(self, event: KernelsListed) -> None: ...
    def expire(self, generation: int) -> set[int]: ...  # the pids to end
    def spare(self) -> set[int]: ...
    def describe(self) -> state.KeptKernels: ...
    def close(self) -> None: ...


class Reloads(Protocol):
    """The reload planner (supervisor.reload.Planner)."""

    pending: reload.PendingReload | None

    def plan(self, current: Config, running: launcher.Launch) -> reload.Plan: ...
    def apply(self, current: Config, new: Config) -> str: ...
    def defer(
        self,
        plan: reload.Plan,
        running: launcher.Launch,
        token: str,
        lab_pid: Callable[[], int | None],
    ) -> float: ...
    def due(self, generation: int) -> bool: ...
    def take(self) -> launcher.Launch | None: ...
    def drop(self) -> None: ...


class Exporter(Protocol):
    def apply(self, settings: Any) -> None: ...
    def stop(self) -> None: ...


class ConfigFollower(Protocol):
    def follow(self, config: Config) -> None: ...
    def accept(self, seen: str | None) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Parts:
    publisher: Publisher
    starter: Starter
    warm: WarmKeeper
    kernels: KernelKeeper
    adopt: Callable[[Started, launcher.Launch, float], Awaitable[Lab]]  # (…, start_timeout)
    sweep: Callable[[set[int], float], Awaitable[int]]  # (spare, grace) → how many ended
    end: Callable[[set[int], float], Awaitable[int]]  # (pids, grace): those and theirs alone
    reloads: Reloads
    exporter: Exporter
    follower: ConfigFollower
    later: Callable[[float, Event], object]  # post the event after a delay
    start_reaping: Callable[[], None]  # SIGCHLD → exits of JupyterLab and of orphans
    stuck: Callable[[], list[int]]  # pids SIGKILL did not end (frozen, D state)
    watchdog_interval: float | None = None  # seconds between WATCHDOG=1, if systemd asks

    def close(self) -> None:
        """The loop has ended: stop what still runs."""
        self.follower.stop()
        self.warm.close()
        self.kernels.close()
        self.exporter.stop()
