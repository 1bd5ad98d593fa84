"""What a configuration reload needs: nothing, a JupyterLab restart, or a rejection; and,
for `[reload] when = "idle"`, the wait for the kernels to finish what they are doing. The
Planner is how the loop asks, applies and waits; the loop keeps only the transitions.

The decision compares the *effective* launch (argv, environment, user, directory, files) of
the new configuration with the running one, so comment edits, reordering and supervisor-only
settings (restart backoff, health probes, logging) never restart JupyterLab.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jlservice import config, listener, log, net
from jlservice.config import Config, ConfigError, KernelsConfig
from jlservice.start import launcher
from jlservice.supervisor import probe
from jlservice.supervisor.events import Event, PendingReloadDue

if TYPE_CHECKING:
    from jlservice.supervisor.parts import ConfigFollower, Exporter

logger = log.get("jlservice.supervisor")

APPLIED, UNCHANGED, REJECTED, PENDING = "applied", "unchanged", "rejected", "pending"

# Moving these would strand the running server's token, cookie secret and state.
_FIXED_WHILE_RUNNING = ("state_dir", "runtime_dir")


@dataclass(frozen=True)
class Plan:
    result: str  # APPLIED (JupyterLab must restart), UNCHANGED or REJECTED
    config: Config | None = None
    launch: launcher.Launch | None = None
    error: str | None = None


def plan(current: Config, running: launcher.Launch) -> Plan:
    """Read the configuration file again and say what applying it takes."""
    try:
        new = config.load(current.path)
        for key in _FIXED_WHILE_RUNNING:
            if getattr(new.service, key) != getattr(current.service, key):
                raise ConfigError(
                    f"{current.path}: [service] {key}: cannot change while "
                    "jlservice runs; restart jlservice to move it"
                )
        launch = launcher.build(new)
        if (launch.ip, launch.port) != (running.ip, running.port):
            problem = net.check_port(launch.ip, launch.port)
            if problem:  # refuse now, rather than stop a working server for nothing
                raise ConfigError(f"{current.path}: [lab] port: {problem}")
        metrics, before = new.metrics, current.metrics
        if metrics.enabled and (metrics.listen != before.listen or not before.enabled):
            problem = net.check_port(*metrics.address, key="[metrics] listen")
            if problem:  # the exporter would go dark; keep the one that serves
                raise ConfigError(f"{current.path}: [metrics] listen: {problem}")
    except ConfigError as exc:
        return Plan(REJECTED, error=str(exc))
    return Plan(UNCHANGED if launch == running else APPLIED, new, launch)


@dataclass
class PendingReload:
    """A restart-requiring reload waiting for idle kernels ([reload] when = "idle")."""

    launch: launcher.Launch
    deadline: float  # time.monotonic()
    generation: int
    task: asyncio.Task[None] | None = None


async def wait_idle(
    pending: PendingReload,
    api_url: str,
    token: str,
    progress: Callable[[str], None],
    stranger: Callable[[], str | None],
) -> None:
    """Return once no kernel executes code, or at the deadline; `progress(why)` meanwhile.

    Kernels whose state is unknown (no answer, or a malformed one: JupyterLab runs as the
    lab user) may be busy. `stranger()`: who other than JupyterLab holds its port, who would
    get the token: while there is one, the kernels are not known to be idle either.
    """
    url = api_url + "/kernels"
    told = unknown_logged = False
    while (left := pending.deadline - time.monotonic()) > 0:
        if (who := stranger()) is not None:
            if not told:
                logger.warning("reload_idle_unknown", problem=who)
                told = True
        else:
            busy = await probe.busy_kernels(url, token, min(5.0, left), stranger)
            if busy == 0:
                return
            if busy is None and not unknown_logged:
                logger.warning(
                    "reload_kernels_unknown",
                    problem=f"GET {url} gave no list of kernels",
                    effect=f"waiting at most {left:.0f} s more",
                )
                unknown_logged = True
            what = f"{busy} busy kernel(s)" if busy else "kernels whose state is unknown"
            progress(f"waiting for {what} to finish, at most {left:.0f} s more")
        await asyncio.sleep(min(1.0, max(left, 0)))


class Planner:
    """The loop's reload planner: what a new configuration needs (`plan`), the settings
    JupyterLab never sees applied at once (`apply`), and the one reload that waits for idle
    kernels (`defer`). Once they are idle, or at the deadline of the first reload that had
    to wait (a newer one does not extend it), it posts PendingReloadDue for its generation;
    an older generation's event is stale."""

    def __init__(
        self,
        post: Callable[[Event], None],
        follower: ConfigFollower,
        exporter: Exporter,
        kernel_settings: Callable[[KernelsConfig], str],
        progress: Callable[[str], None],
        read: Callable[[Config, launcher.Launch], Plan] | None = None,
        wait: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        """`kernel_settings`: new [kernels] settings (limits, culling) → what the limits are
        now; `progress(why)`: what a waiting reload waits for, now; `read` and `wait`: this
        module's plan and wait_idle, or a test's."""
        self._post = post
        self._follower = follower
        self._exporter = exporter
        self._kernel_settings = kernel_settings
        self._progress = progress
        self._read = read or plan
        self._wait = wait or wait_idle
        self.pending: PendingReload | None = None

    def plan(self, current: Config, running: launcher.Launch) -> Plan:
        """Read the configuration file again (the watcher then knows it was read)."""
        found = self._read(current, running)
        if found.config is not None:
            self._follower.accept(found.config.digest)
        return found

    def apply(self, current: Config, new: Config) -> str:
        """Apply at once the settings JupyterLab never sees; returns what the kernels'
        limits are now ("" if that is not known)."""
        if (new.log.level, new.log.format) != (current.log.level, current.log.format):
            log.configure(new.log.level, new.log.format)
        self._follower.follow(new)
        self._exporter.apply(new.metrics)
        return self._kernel_settings(new.kernels)

    def defer(
        self, plan: Plan, running: launcher.Launch, token: str, lab_pid: Callable[[], int | None]
    ) -> float:
        """Wait for the kernels of the JupyterLab `lab_pid()` started as `running` to be
        idle before restarting with the plan's launch; returns the seconds left."""
        previous = self.pending
        max_wait = plan.config.reload.max_wait
        deadline = previous.deadline if previous else time.monotonic() + max_wait
        pending = PendingReload(plan.launch, deadline, previous.generation + 1 if previous else 1)
        self.drop()
        self.pending = pending

        def stranger() -> str | None:
            """Who, instead of the running JupyterLab, would receive a request with the token."""
            pid = lab_pid()
            return (
                "JupyterLab is not running" if pid is None else listener.stranger_to(running, pid)
            )

        wait = self._wait(pending, running.api_url, token, self._progress, stranger)
        pending.task = asyncio.get_running_loop().create_task(self._then_post(pending, wait))
        return deadline - time.monotonic()

    async def _then_post(self, pending: PendingReload, wait: Awaitable[None]) -> None:
        await wait
        self._post(PendingReloadDue(pending.generation))

    def due(self, generation: int) -> bool:
        return self.pending is not None and self.pending.generation == generation

    def take(self) -> launcher.Launch | None:
        """The waiting reload's launch, no longer waiting; None if none waits."""
        launch = self.pending.launch if self.pending else None
        self.drop()
        return launch

    def drop(self) -> None:
        if self.pending is not None and self.pending.task is not None:
            self.pending.task.cancel()
        self.pending = None
