"""The real state machine (supervisor.loop) and Publisher, with fake collaborators.

A Harness runs the loop on an event loop of its own; a test drives it by posting events and
by saying what the fakes do (a start that fails, a JupyterLab that exits), then looks at what
the world was told: state.json records, sd_notify messages, the metrics view, the timers.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import io
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.launch import make_config

from jlservice import config, state
from jlservice.kernels.handover import Kernel
from jlservice.kernels.keeper import KernelKeeper
from jlservice.labapi import Kernels
from jlservice.metrics.view import SupervisorView
from jlservice.start import Secrets, Started, launcher
from jlservice.supervisor import reload
from jlservice.supervisor.children import ExitStatus
from jlservice.supervisor.events import BackoffElapsed, ChildExited, Event, LabReady
from jlservice.supervisor.loop import Supervisor
from jlservice.supervisor.parts import Parts
from jlservice.supervisor.publish import Publisher


class FakeLab:
    def __init__(self, started: Started, post: Callable[[Event], None]) -> None:
        self.pid = started.pid
        self.started = started.began
        self.warm = started.warm
        self.ready_at: float | None = None
        self.answering = True
        self.stop_reason: str | None = None
        self.exited: asyncio.Future[ExitStatus] = asyncio.get_running_loop().create_future()
        self.stops: list[str] = []
        self.obeys_stop = True  # exits when stopped
        self.unkillable = False  # frozen: not even SIGKILL ends it
        self.last_words: str | None = "last words"
        self._post = post

    @property
    def ready(self) -> bool:
        return self.ready_at is not None

    def mark_ready(self, settings: Callable[[], Any]) -> float:
        settings()  # the loop hands the current [health]
        self.ready_at = self.started + 0.25
        return 0.25

    def cancel_watchers(self) -> None:
        pass

    async def stop(self, reason: str, timeout: float) -> None:
        self.stops.append(reason)
        self.stop_reason = self.stop_reason or reason
        if self.unkillable:
            return False  # still there after the SIGKILL
        if self.obeys_stop and not self.exited.done():
            self.exit(ExitStatus(self.pid, None, signal.SIGTERM))
        return True

    def exit(self, status: ExitStatus | None = None) -> None:
        """The process ends (as the Reaper would report it)."""
        status = status or ExitStatus(self.pid, None, signal.SIGKILL)
        self.exited.set_result(status)
        self._post(ChildExited(self.pid, status))

    async def drain_output(self) -> str | None:
        return self.last_words


class FakeStarter:
    def __init__(self) -> None:
        self.next_pid = 1000
        self.warm = False
        self.refusals: list[Exception] = []  # raised by the next starts, in order
        self.starts: list[tuple[launcher.Launch, Secrets]] = []
        self.slow: asyncio.Future[None] | None = None  # the next start waits for it

    async def start(self, launch: launcher.Launch, secrets: Secrets) -> Started:
        self.starts.append((launch, secrets))
        if self.slow is not None:
            await self.slow
            self.slow = None
        if self.refusals:
            raise self.refusals.pop(0)
        self.next_pid += 1
        return Started(
            self.next_pid, io.BytesIO(), warm=self.warm, began=1000.0, began_monotonic=10.0
        )


class FakeWarmKeeper:
    def __init__(self) -> None:
        self.kept: list[tuple[int, bool]] = []  # (port of the launch, enabled)
        self.distrusted: list[str] = []
        self.cold_starts: list[float] = []  # seconds each took, as the loop said
        self.hurried = 0
        self.closed = False
        self.parent: state.WarmParent | None = None

    def keep(self, launch: launcher.Launch, enabled: bool) -> None:
        self.kept.append((launch.port, enabled))

    def distrust(self, launch: launcher.Launch, problem: str) -> None:
        self.distrusted.append(problem)

    def cold_start_took(self, seconds: float) -> None:
        self.cold_starts.append(seconds)

    def hurry(self) -> None:
        self.hurried += 1

    def spare(self) -> set[int]:
        return {4242}

    def describe(self) -> state.WarmParent | None:
        return self.parent

    def close(self) -> None:
        self.closed = True


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[str] = []  # one entry per datagram, fields joined by "\n"

    def ready(self, status: str) -> None:
        self.sent.append(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        self.sent.append("RELOADING=1")

    def stopping(self, status: str) -> None:
        self.sent.append(f"STOPPING=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.sent.append(f"STATUS={status}")

    def watchdog(self) -> None:
        self.sent.append("WATCHDOG=1")


class Records:
    """Stands in for state.json: what was written, or the OSError a full disk would raise."""

    path = Path("/var/lib/jlservice/state.json")

    def __init__(self) -> None:
        self.written: list[state.State] = []
        self.spares: list[state.State] = []
        self.notebooks: list[dict[str, Any]] = []
        self.failing: OSError | None = None

    def write(self, record: state.State, secrets: Secrets) -> None:
        if self.failing is not None:
            raise self.failing
        self.written.append(record)

    def write_spare(self, record: state.State) -> None:
        self.spares.append(record)

    def drop_spare(self) -> None:
        self.spares.append(None)

    def write_notebooks(self, table: dict[str, Any]) -> None:
        self.notebooks.append(table)


class Recorder:
    """Stands in for the exporter and the config follower: remembers what it was told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.calls.append((name, args))


class Harness:
    def __init__(self, tmp_path: Path, **sections: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        (tmp_path / "state").mkdir(exist_ok=True)
        self.config = make_config(tmp_path, sections)
        self.launch = launcher.build(self.config, environ={"PATH": "/usr/bin:/bin"})
        self.starter = FakeStarter()
        self.warm = FakeWarmKeeper()
        self.notifier = FakeNotifier()
        self.records = Records()
        self.view = SupervisorView("test", "tester", "/srv/notebooks")
        self.exporter = Recorder()
        self.follower = Recorder()
        self.labs: list[FakeLab] = []
        self.plans: list[reload.Plan] = []  # what the next reloads find
        self.timers: list[tuple[float, Event]] = []
        self.callbacks: list[tuple[float, Callable[[], None]]] = []  # the Publisher's
        self.idle = asyncio.Event()  # set: the kernels are idle
        self.stranger: Callable[[], str | None] | None = None  # as the last idle wait got it
        self.reloads: reload.Planner | None = None
        self.swept: list[set[int]] = []  # what each sweep spared
        self.ended: list[set[int]] = []  # what each end of some processes alone ended
        self.stuck: set[int] = set()
        self.reaping = False
        self.supervisor: Supervisor | None = None
        self.task: asyncio.Task[int] | None = None
        # The real kernel keeper, with what /proc and JupyterLab would say as fakes.
        self.surviving: list[Kernel] = []  # the kernels a dead JupyterLab leaves running
        self.listed: dict[str, str] = {}  # what the next one says it has (id → notebook)
        self.dead: set[int] = set()  # pids of kept kernels that have exited since
        self.now = 0.0  # the kernel keeper's clock (monotonic seconds)
        self.launch.private_dir.mkdir(parents=True, exist_ok=True)
        self.kernels = KernelKeeper(
            lambda event: self.post(event),
            lambda delay, event: self.timers.append((delay, event)),
            find=lambda runtime_dir, uid, spare: list(self.surviving),
            ask=self._listed,
            held=lambda pid: {k.pid for k in self.surviving if k.id in self.listed},
            alive=lambda kernel: kernel.pid not in self.dead,
            clock=lambda: self.now,
        )

    # ── what the parts do ──

    async def _adopt(self, started: Started, launch: launcher.Launch, timeout: float) -> FakeLab:
        lab = FakeLab(started, self.post)
        self.labs.append(lab)
        return lab

    async def _sweep(self, spare: set[int], grace: float) -> int:
        self.swept.append(spare)
        return 0

    async def _end(self, pids: set[int], grace: float) -> int:
        self.ended.append(pids)
        return len(pids)

    def _plan(self, current: config.Config, running: launcher.Launch) -> reload.Plan:
        return self.plans.pop(0)

    async def _wait_idle(self, pending, api_url: str, token: str, progress, stranger) -> None:
        self.stranger = stranger
        progress("waiting for 1 busy kernel(s) to finish")
        await self.idle.wait()

    async def _listed(self, endpoint, timeout: float) -> Kernels:
        return Kernels({}, dict(self.listed))

    def _start_reaping(self) -> None:
        self.reaping = True

    # ── driving it ──

    def start(self, early_signals: list[int] | None = None) -> None:
        record = state.State(
            token="t" * 64,
            **self.launch.published(),
            config_path=None,
            supervisor_pid=os.getpid(),
            supervisor_started_at=None,
        )
        publisher = Publisher(
            self.records,
            self.notifier,
            self.view,
            record,
            Secrets("t" * 64, b"c" * 64),
            later=lambda delay, callback: self.callbacks.append((delay, callback)),
        )
        events: asyncio.Queue[Event] = asyncio.Queue()
        self.reloads = reload.Planner(
            self.post,
            self.follower,
            self.exporter,
            lambda _kernels: "",
            publisher.still_pending,
            self._plan,
            self._wait_idle,
        )
        parts = Parts(
            publisher=publisher,
            starter=self.starter,
            warm=self.warm,
            kernels=self.kernels,
            adopt=self._adopt,
            sweep=self._sweep,
            end=self._end,
            reloads=self.reloads,
            exporter=self.exporter,
            follower=self.follower,
            later=lambda delay, event: self.timers.append((delay, event)),
            start_reaping=self._start_reaping,
            stuck=lambda: sorted(self.stuck),
        )
        secrets = Secrets("t" * 64, b"c" * 64)
        self.supervisor = Supervisor(self.config, self.launch, secrets, parts, events)
        self.task = asyncio.get_running_loop().create_task(self.supervisor.run(early_signals or []))

    def post(self, event: Event) -> None:
        assert self.supervisor is not None
        self.supervisor.post(event)

    async def settle(self) -> None:
        """Let the loop handle everything posted so far (the fakes never block)."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def step(self, event: Event) -> None:
        self.post(event)
        await self.settle()

    @property
    def lab(self) -> FakeLab:
        return self.labs[-1]

    async def ready(self) -> FakeLab:
        """The current JupyterLab answers."""
        await self.settle()
        await self.step(LabReady(self.lab.pid))
        return self.lab

    async def failed_starts(self, count: int) -> None:
        """`count` starts in a row exit before they answer; the last one's backoff is left
        pending."""
        for n in range(count):
            await self.settle()
            self.lab.exit()
            await self.settle()
            if n < count - 1:
                await self.fire(BackoffElapsed)

    async def fire(self, kind: type) -> float:
        """Let the last timer of this kind go off; returns its delay."""
        delay, event = next((d, e) for d, e in reversed(self.timers) if isinstance(e, kind))
        await self.step(event)
        return delay

    async def exit_code(self) -> int:
        assert self.task is not None
        return await asyncio.wait_for(self.task, 5)

    @property
    def state(self) -> state.State:
        return self.records.written[-1]

    def statuses(self) -> list[str]:
        """The status of every state.json written, without repeats in a row."""
        out: list[str] = []
        for record in self.records.written:
            if not out or out[-1] != record.status:
                out.append(record.status)
        return out

    def sent(self, prefix: str = "") -> list[str]:
        return [m for m in self.notifier.sent if m.startswith(prefix) and m != "WATCHDOG=1"]


@pytest.fixture(autouse=True)
def _small_heap() -> Iterator[None]:
    """The loop collects garbage at each ready (gc.collect): here a full collection walks
    pytest's heap (~90 ms), jlservice's own is a small part of it. Frozen for each test, what
    existed before it is left out of its collections; what it makes is still collected."""
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture
def machine(tmp_path: Path) -> Callable[..., Harness]:
    """`machine(**sections)`: a Harness whose configuration has these sections."""
    return lambda **sections: Harness(tmp_path, **sections)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests here on a fresh event loop each (whose close removes the signal
    handlers the loop installed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True
