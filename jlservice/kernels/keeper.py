"""The kernel keeper: a dead JupyterLab's kernels are kept for the next one, and ended
(by the supervisor's sweep) when it has not adopted them within [kernels] grace.

A collaborator of the supervisor's loop (supervisor.loop), which calls it at each start,
readiness, stop and exit of JupyterLab; it speaks back only by posting events
(KernelsListed, KernelGraceElapsed, KernelsChanged), and the Publisher shows what
`describe()` says. Which processes are kernels it decides from /proc (kernels.verify); the
next JupyterLab learns what to adopt from the handover file it writes (kernels.handover);
whether it did, from the pidfds that JupyterLab holds once it answers (/proc, which no
login or certificate stands in front of); their notebooks, for the log, from its API.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import psutil

from jlservice import labapi, log, procfs, state
from jlservice.kernels import handover, verify
from jlservice.kernels.handover import Kernel
from jlservice.kernels.output import KernelOutput
from jlservice.labapi import Endpoint
from jlservice.start import reserve
from jlservice.start.launcher import Launch
from jlservice.supervisor.events import (
    Event,
    KernelGraceElapsed,
    KernelsChanged,
    KernelsListed,
)

logger = log.get("jlservice.kernels")

ASK_TIMEOUT_S = 10.0  # for JupyterLab's answer: which kernels it has
LOST_REASONS = ("not_adopted", "exited", "user_changed", "survive_restarts_off", "stop")


Find = Callable[[Path, int, Iterable[int]], list[Kernel]]
Ask = Callable[[Endpoint, float], Awaitable["labapi.Kernels | None"]]


async def _fetch(endpoint: Endpoint, timeout: float) -> labapi.Kernels | None:
    """JupyterLab's kernels and notebooks, asked off the loop (a blocking HTTP client)."""
    return await asyncio.to_thread(labapi.fetch, endpoint, timeout)


class KernelKeeper:
    def __init__(
        self,
        post: Callable[[Event], None],
        later: Callable[[float, Event], object],
        find: Find = verify.surviving,
        ask: Ask = _fetch,
        held: Callable[[int], set[int]] = verify.pidfds_of,
        alive: Callable[[Kernel], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`later(delay, event)`: post `event` after `delay` seconds. `find`: the verified
        kernels among our children; `ask`: what a JupyterLab says it has; `held`: the pids a
        process holds pidfds of; `alive`: whether a
        kept kernel's process still runs; `clock`: monotonic seconds (tests give fakes)."""
        self._post = post
        self._later = later
        self._find = find
        self._ask_lab = ask
        self._held = held
        self._alive = alive or _same_process
        self._clock = clock
        self.output = KernelOutput()
        self.waiting: dict[str, Kernel] = {}  # kept at the last exit, not adopted yet
        self.deadlines: dict[str, float] = {}  # of the waiting (self._clock())
        self.adopted: dict[str, Kernel] = {}  # by the running JupyterLab
        self.kept = 0  # across the last restart
        self.adopted_total = 0
        self.lost = dict.fromkeys(LOST_REASONS, 0)
        self.generation = 0  # which exit the events are about
        self._launch: Launch | None = None  # what the running (or last) JupyterLab was handed
        self._notebooks: dict[str, str] = {}  # kernel id → notebook path, as last heard
        self._tasks: set[asyncio.Task[None]] = set()

    # ── JupyterLab's life ───────────────────────────────────────────────────

    def prepare(self, launch: Launch) -> bool:
        """Before a start: hand it the kernels that wait for it. It keeps its kernels at its
        exit only when told so just before jlservice stops it (lab_stopping): when jlservice
        itself dies, JupyterLab (sent SIGTERM by the parent-death signal) shuts them down.

        A start for another lab user, or without survive_restarts (a reload applied while
        none ran), gives up the waiting kernels instead: True, for the loop to sweep them.
        """
        given_up = False
        if self.waiting and (reason := self._why_not(launch, True)) is not None:
            self._lose(self.waiting.values(), reason)
            self.waiting, self.deadlines = {}, {}
            self._changed()
            given_up = True
        self._launch = launch
        self._hand_over(launch, False, self.waiting.values())
        return given_up

    def ready(self, endpoint: Endpoint) -> None:
        """It answers: read its kernels' output, and ask which of the waiting it adopted."""
        task = asyncio.get_running_loop().create_task(self._ask(endpoint, self.generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def lab_stopping(self, launch: Launch, wanted: bool) -> None:
        """It is being stopped on purpose: it leaves its kernels running if they are to be
        kept (`wanted`: not a stop, [kernels] survive_restarts, the same user next)."""
        if self._launch is not None:
            self._hand_over(self._launch, self._keeps(launch, wanted))

    def exited(self, launch: Launch, wanted: bool, spare: Iterable[int], grace: float) -> set[int]:
        """It exited: the pids of its kernels kept for the next start (`launch`), which the
        sweep must spare; the others are left to it."""
        previous = self._launch
        found = []
        if previous is not None and previous.keep_kernels:
            found = self._find(previous.jupyter_runtime_dir, previous.account.uid, spare)
        self.generation += 1
        self.adopted = {}
        self._notebooks = {k.id: self._notebooks.get(k.id, "") for k in found}
        if not self._keeps(launch, wanted):
            reason = self._why_not(launch, wanted)
            if reason != "stop":  # a stop counts what waited, in stopping()
                self._lose(found, reason)
            self.waiting, self.deadlines = {}, {}
            self._changed()
            return set()
        now = self._clock()
        self.deadlines = {k.id: self.deadlines.get(k.id, now + grace) for k in found}
        self.waiting = {k.id: k for k in found}
        self.kept = len(found)
        if found:
            logger.info("kernels_kept", count=len(found), kernels=[k.id for k in found])
            self._schedule_expiry()
        self._changed()
        return {k.pid for k in found}

    def stopping(self) -> None:
        """jlservice stops: the running JupyterLab shuts its kernels down, the sweep ends
        those that waited for it."""
        if self._launch is not None:
            self._hand_over(self._launch, False)
        self._lose(self.waiting.values(), "stop")
        self.waiting, self.deadlines, self.adopted = {}, {}, {}
        self._changed()

    # ── events ──────────────────────────────────────────────────────────────

    def listed(self, event: KernelsListed) -> None:
        """What the new JupyterLab said it has: those of the waiting are adopted."""
        if event.generation != self.generation:
            return
        for kernel_id in [k for k in self.waiting if k in event.adopted]:
            self._notebooks[kernel_id] = event.notebooks.get(kernel_id, "")  # capped by fetch
            kernel = self.waiting.pop(kernel_id)
            self.deadlines.pop(kernel_id, None)
            self.adopted[kernel_id] = kernel
            self.adopted_total += 1
            logger.info(
                "kernel_adopted",
                kernel_id=kernel_id,
                pid=kernel.pid,
                notebook=self._notebooks[kernel_id] or None,
            )
        self._changed()

    def expire(self, generation: int) -> set[int]:
        """The grace is over for some of the waiting: forget them. The pids of those still
        running, for the loop to end (them and theirs alone: the running JupyterLab's
        orphans, a daemon a notebook started, are not theirs to end)."""
        if generation != self.generation:
            return set()
        now = self._clock()
        late = [self.waiting[k] for k, due in self.deadlines.items() if due <= now]
        for kernel in late:
            del self.waiting[kernel.id]
            del self.deadlines[kernel.id]
        alive = [k for k in late if self._alive(k)]
        self._lose(alive, "not_adopted")
        self._lose([k for k in late if k not in alive], "exited")
        self._schedule_expiry()
        self._changed()
        return {k.pid for k in alive}

    # ── what others ask ─────────────────────────────────────────────────────

    def spare(self) -> set[int]:
        """Kept kernels (waiting or adopted) that still run: no sweep may end them."""
        kept = [*self.waiting.values(), *self.adopted.values()]
        return {k.pid for k in kept if self._alive(k)}

    def describe(self) -> state.KeptKernels:
        return state.KeptKernels(self.kept, len(self.adopted), len(self.waiting))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.output.close()

    # ── inside ──────────────────────────────────────────────────────────────

    def _keeps(self, launch: Launch, wanted: bool) -> bool:
        return self._why_not(launch, wanted) is None

    def _why_not(self, launch: Launch, wanted: bool) -> str | None:
        if not wanted:
            return "stop" if launch.keep_kernels else "survive_restarts_off"
        if not launch.keep_kernels:
            return "survive_restarts_off"
        if self._launch is not None and self._launch.account.uid != launch.account.uid:
            return "user_changed"
        return None

    async def _ask(self, endpoint: Endpoint, generation: int) -> None:
        if self._launch is not None:
            await self.output.hold(self._launch.kernel_output)
        if not self.waiting:
            return
        held = self._held(endpoint.pid)
        adopted = frozenset(k.id for k in self.waiting.values() if k.pid in held)
        found = await self._ask_lab(endpoint, ASK_TIMEOUT_S) if adopted else None
        notebooks = {k: v for k, v in found.notebooks.items() if k in adopted} if found else {}
        self._post(KernelsListed(generation, adopted, notebooks))

    def _hand_over(self, launch: Launch, keep: bool, kernels: Iterable[Kernel] = ()) -> None:
        reserve.make_room(launch.private_dir)  # /run full: the handover must still be written
        try:
            handover.write(launch, keep, kernels)
        except OSError as exc:  # the next JupyterLab adopts nothing; they end at the grace
            logger.error(
                "kernels_handover_failed", path=str(launch.handover_file), problem=str(exc)
            )

    def _lose(self, kernels: Iterable[Kernel], reason: str) -> None:
        for kernel in kernels:
            self.lost[reason] += 1
            notebook = self._notebooks.pop(kernel.id, "") or None
            logger.warning(
                "kernel_lost", kernel_id=kernel.id, pid=kernel.pid, notebook=notebook, reason=reason
            )

    def _schedule_expiry(self) -> None:
        if self.deadlines:
            delay = max(min(self.deadlines.values()) - self._clock(), 0.0)
            self._later(delay, KernelGraceElapsed(self.generation))

    def _changed(self) -> None:
        self._post(KernelsChanged())


def _same_process(kernel: Kernel) -> bool:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(kernel.pid)
        same = procfs.start_ticks(kernel.pid) == kernel.started  # not moved by clock steps
        return same and proc.status() != psutil.STATUS_ZOMBIE
    return False
