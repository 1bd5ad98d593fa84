"""The supervisor: one asyncio loop, one event queue, one state machine.

    starting ──ready──▶ ready ──exit / unhealthy──▶ (sweep) ──▶ backoff ──▶ starting
        │                 │                                       │
        └──exit / timeout─┴──────────── stop signal ──────────────┴──▶ stopped

Signal handlers, timers, probes and the child reaper only post events; `_handle` decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from jlservice import EX_CONFIG, children, lab_output, launcher, log, probe, state
from jlservice.config import Config, RestartConfig
from jlservice.notify import Notifier

logger = log.get("jlservice.supervisor")


@dataclass(frozen=True)
class ChildExited:
    pid: int
    status: children.ExitStatus


@dataclass(frozen=True)
class LabReady:
    pid: int


@dataclass(frozen=True)
class LabUnhealthy:
    pid: int
    problem: str


@dataclass(frozen=True)
class StartTimedOut:
    pid: int


@dataclass(frozen=True)
class BackoffElapsed:
    attempt: int


@dataclass(frozen=True)
class StopRequested:
    signal: str


@dataclass(frozen=True)
class RotateRequested:
    pass


Event = (
    ChildExited
    | LabReady
    | LabUnhealthy
    | StartTimedOut
    | BackoffElapsed
    | StopRequested
    | RotateRequested
)


@dataclass
class RunningLab:
    """One JupyterLab process and everything that watches it."""

    pid: int
    output: lab_output.LabOutput
    exited: asyncio.Future[children.ExitStatus]
    started: float
    ready_at: float | None = None
    stop_reason: str | None = None
    probe_failed: bool = False
    start_timer: asyncio.TimerHandle | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def cancel_watchers(self) -> None:
        if self.start_timer is not None:
            self.start_timer.cancel()
        for task in self.tasks:
            task.cancel()


def backoff_delay(failures: int, restart: RestartConfig) -> float:
    """Seconds to wait before start number `failures` + 1.

    The first failure after a healthy run restarts at once (a single crash should cost no
    more than a cold start); further failures in a row wait initial_delay, doubling each
    time up to max_delay.
    """
    if failures <= 1:
        return 0.0
    return min(restart.initial_delay * 2 ** (failures - 2), restart.max_delay)


class Supervisor:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.launch = launcher.build(config)
        self.reaper = children.Reaper()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.lab: RunningLab | None = None
        self.failures = 0
        self.attempt = 0
        self.stopping = False
        self.exit_code: int | None = None
        self.token = ""
        self.cookie_secret = b""
        self.state: state.State | None = None
        self._lines = asyncio.Event()

    # ── plumbing ────────────────────────────────────────────────────────────

    def post(self, event: Event) -> None:
        self.events.put_nowait(event)

    def _save(self, **changes: object) -> None:
        assert self.state is not None
        self.state = self.state.evolve(**changes)
        state.write_state(self.config.service.state_dir, self.state)

    @property
    def url(self) -> str:
        lab = self.config.lab
        host = lab.ip if lab.ip not in ("0.0.0.0", "::") else socket.getfqdn()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{lab.port}{lab.base_url}"

    def _status_line(self) -> str:
        assert self.lab is not None
        return f"JupyterLab ready on {self.url} as {self.config.lab.user} (pid {self.lab.pid})"

    # ── main loop ───────────────────────────────────────────────────────────

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        launcher.become_subreaper()
        self.reaper.install(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.post, StopRequested(sig.name))
        loop.add_signal_handler(signal.SIGUSR1, self.post, RotateRequested())
        self._load_secrets()
        watchdog = loop.create_task(self._watchdog()) if self.notifier.watchdog_interval else None
        logger.info(
            "supervisor_started",
            pid=os.getpid(),
            config=str(self.config.path or "built-in defaults"),
            user=self.config.lab.user,
            port=self.config.lab.port,
        )
        await self._start()
        while self.exit_code is None:
            await self._handle(await self.events.get())
        if watchdog:
            watchdog.cancel()
        return self.exit_code

    def _load_secrets(self) -> None:
        service = self.config.service
        state.ensure_dir(service.state_dir, 0o700)
        self.token = state.load_or_create_token(service.state_dir)
        self.cookie_secret = state.load_or_create_cookie_secret(service.state_dir)
        log.add_secret(self.token)
        lab = self.config.lab
        me = os.getpid()
        self.state = state.State(
            token=self.token,
            url=self.url,
            ip=lab.ip,
            port=lab.port,
            base_url=lab.base_url,
            user=lab.user,
            notebook_dir=str(lab.notebook_dir),
            config_path=str(self.config.path) if self.config.path else None,
            supervisor_pid=me,
            supervisor_started_at=state.process_start_time(me),
        )
        self._save()

    async def _handle(self, event: Event) -> None:
        lab = self.lab
        current = lab is not None and getattr(event, "pid", None) == lab.pid
        match event:
            case ChildExited() if current:
                await self._on_exit(event.status)
            case LabReady() if current and lab.ready_at is None:
                self._on_ready()
            case LabUnhealthy() if current and lab.stop_reason is None:
                logger.warning("lab_unhealthy", pid=lab.pid, problem=event.problem)
                self._save(last_error=f"JupyterLab stopped answering: {event.problem}")
                await self._stop_lab("unhealthy")
            case StartTimedOut() if current and lab.ready_at is None:
                timeout = self.config.restart.start_timeout
                logger.error("lab_start_timeout", pid=lab.pid, timeout_s=timeout)
                self._save(last_error=f"JupyterLab did not answer within {timeout:g} s")
                await self._stop_lab("start_timeout")
            case BackoffElapsed() if event.attempt == self.attempt and not self.stopping:
                await self._start()
            case StopRequested():
                await self._on_stop(event.signal)
            case RotateRequested():
                await self._on_rotate()
            case _:
                logger.debug("event_ignored", event=repr(event))

    # ── starting ────────────────────────────────────────────────────────────

    async def _start(self) -> None:
        self.attempt += 1
        problem = launcher.check_port(self.launch.ip, self.launch.port)
        if problem:
            logger.error("lab_start_failed", problem=problem)
            self._failed(problem)
            return
        launcher.prepare_private_dir(
            self.launch, self.config.service.runtime_dir, self.token, self.cookie_secret
        )
        try:
            popen = launcher.spawn(self.launch)
        except launcher.LaunchError as exc:
            logger.error("lab_start_failed", problem=str(exc))
            self._save(status=state.FAILED, last_error=str(exc))
            self.notifier.status(f"Failed: {exc}")
            self.exit_code = EX_CONFIG
            return
        loop = asyncio.get_running_loop()
        exited = self.reaper.watch(popen.pid)
        exited.add_done_callback(lambda f: self.post(ChildExited(popen.pid, f.result())))
        _, output = await loop.connect_read_pipe(
            lambda: lab_output.LabOutput(popen.pid, self._lines.set), popen.stdout
        )
        popen.stdout = None  # the pipe belongs to the protocol's transport now
        popen.returncode = 0  # reaped by us; keeps Popen from ever waiting on a reused pid
        self.lab = RunningLab(
            pid=popen.pid,
            output=output,
            exited=exited,
            started=time.monotonic(),
            start_timer=loop.call_later(
                self.config.restart.start_timeout, self.post, StartTimedOut(popen.pid)
            ),
            tasks=[loop.create_task(self._wait_ready(popen.pid))],
        )
        now = time.time()
        self._save(
            status=state.STARTING,
            lab_pid=popen.pid,
            started_at=now,
            ready_at=None,
            token=self.token,
        )
        self.notifier.status(f"Starting JupyterLab on {self.url} as {self.config.lab.user}")
        logger.info(
            "lab_starting", pid=popen.pid, user=self.config.lab.user, port=self.config.lab.port
        )

    async def _wait_ready(self, pid: int) -> None:
        """Probe as soon as JupyterLab prints something, and at least every 100 ms."""
        url = probe.base_url(self.launch.ip, self.launch.port, f"{self.config.lab.base_url}api")
        while await probe.api_problem(url, timeout=2.0) is not None:
            self._lines.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lines.wait(), 0.1)
        self.post(LabReady(pid))

    def _on_ready(self) -> None:
        lab = self.lab
        assert lab is not None
        lab.ready_at = time.monotonic()
        lab.start_timer.cancel()
        lab.tasks.append(asyncio.get_running_loop().create_task(self._watch_health(lab)))
        ready_s = round(lab.ready_at - lab.started, 3)
        self._save(status=state.READY, ready_at=time.time(), last_error=None)
        self.notifier.ready(self._status_line())
        logger.info("lab_ready", pid=lab.pid, url=self.url, ready_s=ready_s)
        if sys.stdout.isatty():
            print(f"JupyterLab is ready: {state.login_url(self.state)}", flush=True)

    async def _watch_health(self, lab: RunningLab) -> None:
        health = self.config.health
        url = probe.base_url(self.launch.ip, self.launch.port, f"{self.config.lab.base_url}api")
        failures = 0
        while True:
            await asyncio.sleep(health.interval)
            problem = await probe.api_problem(url, timeout=health.timeout)
            lab.probe_failed = problem is not None
            failures = failures + 1 if problem else 0
            if problem:
                logger.warning(
                    "lab_probe_failed",
                    pid=lab.pid,
                    problem=problem,
                    failures=failures,
                    limit=health.failures,
                )
            if failures >= health.failures:
                self.post(LabUnhealthy(lab.pid, problem or ""))
                return

    async def _watchdog(self) -> None:
        """WATCHDOG=1 while JupyterLab is alive and answering (or being brought back)."""
        interval = self.notifier.watchdog_interval
        assert interval is not None
        while True:
            if self.lab is None or not self.lab.probe_failed:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    # ── stopping and exits ──────────────────────────────────────────────────

    async def _stop_lab(self, reason: str) -> None:
        """SIGTERM (JupyterLab shuts its kernels down), SIGKILL after the stop timeout."""
        lab = self.lab
        if lab is None or lab.exited.done():
            return
        lab.stop_reason = lab.stop_reason or reason
        lab.cancel_watchers()
        logger.info("lab_stopping", pid=lab.pid, reason=reason)
        with contextlib.suppress(ProcessLookupError):
            os.kill(lab.pid, signal.SIGTERM)
            os.kill(lab.pid, signal.SIGCONT)  # a stopped (hung) process must run to exit
        try:
            await asyncio.wait_for(asyncio.shield(lab.exited), self.config.restart.stop_timeout)
        except asyncio.TimeoutError:
            logger.warning(
                "lab_stop_timeout", pid=lab.pid, timeout_s=self.config.restart.stop_timeout
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(lab.pid, signal.SIGKILL)
            await lab.exited

    async def _on_exit(self, status: children.ExitStatus) -> None:
        lab = self.lab
        assert lab is not None
        lab.cancel_watchers()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(lab.output.closed), 1.0)
        self.lab = None
        reason = lab.stop_reason or "crash"
        log_level = logger.info if lab.stop_reason else logger.error
        log_level("lab_exited", pid=lab.pid, status=status.describe(), reason=reason)
        swept = await children.sweep(self.reaper, grace=self.config.restart.stop_timeout)
        if swept:
            logger.info("leftovers_ended", count=swept)
        last_exit = state.LastExit(
            code=status.code, signal=status.signal, at=time.time(), reason=reason
        )
        self._save(lab_pid=None, last_exit=last_exit)
        if self.stopping:
            return self._finish()
        if reason == "rotate":
            self._save(restarts=self.state.restarts + 1)
            return await self._start()
        problem = None
        if lab.ready_at is None and reason == "crash":
            problem = lab.output.last_problem() or status.describe()
            problem = f"JupyterLab {status.describe()} during start-up: {problem}"
        elif reason == "crash":
            problem = f"JupyterLab {status.describe()}"
        if (
            lab.ready_at is not None
            and time.monotonic() - lab.ready_at >= self.config.restart.reset_after
        ):
            self.failures = 0
        self._failed(problem or self.state.last_error or status.describe())

    def _failed(self, problem: str) -> None:
        """Count a failure; restart after the backoff delay or give up."""
        self.failures += 1
        restart = self.config.restart
        if self.failures >= restart.max_failures:
            message = f"gave up after {self.failures} failed starts in a row: {problem}"
            logger.error("supervisor_giving_up", failures=self.failures, problem=problem)
            self._save(status=state.FAILED, last_error=message)
            self.notifier.status(f"Failed: {message}")
            self.exit_code = 1
            return
        delay = backoff_delay(self.failures, restart)
        self._save(status=state.BACKOFF, last_error=problem, restarts=self.state.restarts + 1)
        self.notifier.status(f"Restarting JupyterLab in {delay:g} s: {problem}")
        logger.info("lab_restart_scheduled", delay_s=delay, failures=self.failures)
        asyncio.get_running_loop().call_later(delay, self.post, BackoffElapsed(self.attempt))

    async def _on_stop(self, signame: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        logger.info("supervisor_stopping", signal=signame)
        self.notifier.stopping("Stopping JupyterLab")
        self._save(status=state.STOPPING)
        if self.lab is not None:
            await self._stop_lab("stop")  # its ChildExited event finishes the stop
        else:
            await children.sweep(self.reaper, grace=self.config.restart.stop_timeout)
            self._finish()

    def _finish(self) -> None:
        self._save(status=state.STOPPED, lab_pid=None)
        logger.info("supervisor_stopped")
        self.exit_code = 0

    async def _on_rotate(self) -> None:
        self.token = state.new_token()
        self.cookie_secret = state.new_cookie_secret()
        log.add_secret(self.token)
        state.write_cookie_secret(self.config.service.state_dir, self.cookie_secret)
        logger.info("token_rotated")
        if self.lab is not None:
            await self._stop_lab("rotate")  # the next start publishes the new token
        else:
            self._save(token=self.token)
