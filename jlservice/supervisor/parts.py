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
from jlservice.config import Config, KernelsConfig
from jlservice.metrics.view import Endpoint
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
    async def stop(self, reason: str, timeout: float) -> None: ...
    async def drain_output(self) -> str | None: ...


class Starter(Protocol):
    async def start(self, launch: launcher.Launch, secrets: Secrets) -> Started: ...


class Keeper(Protocol):
    """The warm parent (start.warm.keeper.Keeper)."""

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

    def prepare(self, launch: launcher.Launch) -> None: ...
    def ready(self, endpoint: Endpoint) -> None: ...
    def lab_stopping(self, launch: launcher.Launch, wanted: bool) -> None: ...
    def exited(
        self, launch: launcher.Launch, wanted: bool, spare: set[int], grace: float
    ) -> set[int]: ...
    def stopping(self) -> None: ...
    def listed(self, event: KernelsListed) -> None: ...
    def expire(self, generation: int) -> bool: ...
    def spare(self) -> set[int]: ...
    def describe(self) -> state.KeptKernels: ...
    def close(self) -> None: ...


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
    keeper: Keeper
    kernels: KernelKeeper
    adopt: Callable[[Started, launcher.Launch, float], Awaitable[Lab]]  # (…, start_timeout)
    sweep: Callable[[set[int], float], Awaitable[int]]  # (spare, grace) → how many ended
    end: Callable[[set[int], float], Awaitable[int]]  # (pids, grace): those and theirs alone
    plan: Callable[[Config, launcher.Launch], reload.Plan]
    # (pending, api_url, token, progress, stranger): returns once the kernels are idle, or at
    # the deadline; stranger() says who else holds the port (who must not get the token)
    wait_idle: Callable[..., Awaitable[None]]
    exporter: Exporter
    follower: ConfigFollower
    later: Callable[[float, Event], object]  # post the event after a delay
    start_reaping: Callable[[], None]  # SIGCHLD → exits of JupyterLab and of orphans
    stuck: Callable[[], list[int]]  # pids SIGKILL did not end (frozen, D state)
    watchdog_interval: float | None = None  # seconds between WATCHDOG=1, if systemd asks
    # New [kernels] settings, from a reload (limits, culling) → what the limits are now
    kernel_settings: Callable[[KernelsConfig], str] = lambda _kernels: ""
