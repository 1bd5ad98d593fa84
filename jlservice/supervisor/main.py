"""`jlservice run`: start JupyterLab, then the supervisor loop that keeps it running.

JupyterLab is started before the supervisor's own heavier imports (asyncio, structlog,
psutil, the supervisor): its ~2 s cold start then overlaps them instead of waiting for them.
Then the real collaborators are made and handed to the state machine (supervisor.loop).
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from jlservice import errors, files, login, prctl, procfs, state
from jlservice.config import Config, ConfigError
from jlservice.start import Secrets, Started, launcher
from jlservice.start.cold import ColdStart
from jlservice.supervisor import resources

if TYPE_CHECKING:
    from jlservice.supervisor.events import Event
    from jlservice.supervisor.parts import Starter


def run(config: Config) -> int:
    service = config.service
    launch = launcher.build(config)
    for name, mode in (("state_dir", 0o700), ("runtime_dir", launcher.runtime_dir_mode(launch))):
        try:
            files.ensure_dir(getattr(service, name), mode)
        except OSError as exc:
            raise ConfigError(f"[service] {name}: {exc.strerror}") from None
    secrets, replaced_from = login.load_secrets(
        service.state_dir, launch.account.uid, launch.account.name
    )
    prctl.become_subreaper()  # before the first child: its orphans must come back to us
    early = resources.before_children(config.kernels, launch)  # the OOM order, the cgroups
    _first_handover(launch, service.runtime_dir)
    # Until the loop takes over, a stop, reload or rotation request is kept, not fatal.
    early_signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, lambda received, _frame: early_signals.append(received))
    cold = ColdStart(service.runtime_dir)
    try:
        first: Started | Exception = cold.start_now(launch, secrets)
    except (errors.CannotStartNow, errors.LaunchError) as exc:
        first = exc  # the supervisor reports it, in its log and state, like any later start

    import asyncio

    from jlservice import log

    log.configure(config.log.level, config.log.format)
    return asyncio.run(
        _supervise(config, launch, secrets, replaced_from, first, cold, early_signals, early)
    )


def _first_handover(launch: launcher.Launch, runtime_dir) -> None:
    """The first JupyterLab adopts nothing (what an earlier jlservice left is not ours); the
    kernel keeper takes over from the next start."""
    from jlservice.kernels import handover
    from jlservice.start import private_dir

    try:
        private_dir.ensure_private_dir(launch, runtime_dir)
        handover.write(launch, keep=False)
    except OSError:
        pass  # the start prepares the same directory, and says what is wrong with it


class FirstStart:
    """The first start was made before the supervisor's imports; later ones by `then`."""

    def __init__(self, first: Started | Exception, then: Starter) -> None:
        self._first: Started | Exception | None = first
        self.then = then

    async def start(self, launch: launcher.Launch, secrets: Secrets) -> Started:
        first, self._first = self._first, None
        if first is None:
            return await self.then.start(launch, secrets)
        if isinstance(first, Exception):
            raise first
        return first


async def _supervise(
    config: Config,
    launch: launcher.Launch,
    secrets: Secrets,
    replaced_from: str | None,
    first: Started | Exception,
    cold: ColdStart,
    early_signals: list[int],
    early: resources.Early,
) -> int:
    """Make the real collaborators and run the state machine with them."""
    import asyncio
    import contextlib
    import os

    from jlservice import __version__, log
    from jlservice.kernels.keeper import KernelKeeper
    from jlservice.metrics.exporter import Exporter
    from jlservice.metrics.sampler import Snapshot
    from jlservice.metrics.view import SupervisorView
    from jlservice.start.warm.keeper import WarmKeeper
    from jlservice.start.warm.strategy import WarmStart
    from jlservice.supervisor import children, reload
    from jlservice.supervisor.events import NotebooksSampled, WarmParentChanged
    from jlservice.supervisor.lab import Lab
    from jlservice.supervisor.loop import Parts, Supervisor
    from jlservice.supervisor.notify import Notifier
    from jlservice.supervisor.publish import Publisher, StateFile
    from jlservice.supervisor.watch import ConfigFollower

    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    post = events.put_nowait
    notifier = Notifier()
    view = SupervisorView(__version__, config.lab.user, str(config.lab.notebook_dir))
    log.add_secret(secrets.token)
    me = os.getpid()
    record = state.State(
        token=secrets.token,
        **launch.published(),
        config_path=str(config.path) if config.path else None,
        supervisor_pid=me,
        supervisor_started_at=procfs.start_time(me),
        supervisor_start_ticks=procfs.start_ticks(me),
        lab_uid=launch.account.uid,
    )
    publisher = Publisher(
        StateFile(config.service.state_dir, config.service.runtime_dir),
        notifier,
        view,
        record,
        secrets,
        later=loop.call_later,
    )
    reaper = children.Reaper(stuck_ended=publisher.stuck)
    exporter = Exporter(view, config.metrics)

    used = resources.Resources(early, post, exporter, view, config.kernels, launch.keep_kernels)

    def sampled(snapshot: Snapshot) -> None:  # in the sampler's thread
        with contextlib.suppress(RuntimeError):  # the loop has closed: jlservice exits
            loop.call_soon_threadsafe(post, NotebooksSampled(snapshot))
            loop.call_soon_threadsafe(used.sampled, snapshot)

    exporter.sampler.on_round = sampled
    publisher.limits(early.limits_said)
    exporter.start()
    warm = WarmKeeper(reaper, lambda: post(WarmParentChanged()))
    follower = ConfigFollower(loop, post)
    kernels = KernelKeeper(post, lambda delay, event: loop.call_later(delay, post, event))

    async def adopt(started: Started, launch: launcher.Launch, start_timeout: float) -> Lab:
        used.lab_started(started.pid, launch)
        return await Lab.adopt(started, launch, reaper, post, start_timeout)

    async def sweep(spare: set[int], grace: float) -> int:
        return await children.sweep(reaper, grace, lambda: children.descendants(spare))

    async def end(pids: set[int], grace: float) -> int:
        return await children.sweep(reaper, grace, children.kernels_of(pids))

    parts = Parts(
        publisher=publisher,
        starter=FirstStart(
            first,
            WarmStart(
                warm,
                cold,
                lambda: sweep(warm.spare() | kernels.spare(), config.restart.stop_timeout),
            ),
        ),
        warm=warm,
        kernels=kernels,
        adopt=adopt,
        sweep=sweep,
        end=end,
        reloads=reload.Planner(post, follower, exporter, used.apply, publisher.still_pending),
        exporter=exporter,
        follower=follower,
        later=lambda delay, event: loop.call_later(delay, post, event),
        start_reaping=lambda: reaper.install(loop),
        stuck=lambda: sorted(reaper.stuck),
        watchdog_interval=notifier.watchdog_interval,
    )
    if replaced_from is not None:
        from jlservice.supervisor.credentials import log_user_changed

        log_user_changed(replaced_from, launch.account)
    await used.start(launch, config.kernels.memory_max)
    try:
        return await Supervisor(config, launch, secrets, parts, events).run(early_signals)
    finally:
        used.close()
        cold.close()  # the listening socket it held across restarts: the port is free
