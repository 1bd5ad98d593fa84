"""The supervisor: one asyncio loop, one event queue, one state machine.

    starting ──ready──▶ ready ──exit / unhealthy──▶ (sweep) ──▶ backoff ──▶ starting
        │                 │  ╰──reload / rotate──▶ (stop, sweep) ──▶ starting
        └──exit / timeout─┴──────────── stop signal ─────────────────▶ stopped

Signal handlers, timers, probes, the file watcher and the child reaper only post events
(jlservice.events); `_handle` decides. The process itself is a jlservice.lab.Lab; reloads
are handled by the jlservice.reloading mixin.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time

from jlservice import EX_CONFIG, __version__, children, launcher, log, state
from jlservice.config import Config, RestartConfig
from jlservice.config.access import open_to_local_users, risks
from jlservice.events import (
    BackoffElapsed,
    ChildExited,
    Event,
    LabReady,
    LabUnhealthy,
    PendingReloadDue,
    ReloadRequested,
    RotateRequested,
    StartTimedOut,
    StopRequested,
)
from jlservice.lab import Lab
from jlservice.metrics.exporter import Exporter
from jlservice.metrics.view import Endpoint, SupervisorView
from jlservice.notify import Notifier
from jlservice.reloading import Reloading
from jlservice.warm.keeper import Keeper
from jlservice.warming import Warming

logger = log.get("jlservice.supervisor")


SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def signal_event(signum: int) -> Event:
    """Signals are commands: stop, reload, rotate the token."""
    if signum == signal.SIGHUP:
        return ReloadRequested("SIGHUP")
    if signum == signal.SIGUSR1:
        return RotateRequested()
    return StopRequested(signal.Signals(signum).name)


def backoff_delay(failures: int, restart: RestartConfig) -> float:
    """Seconds to wait before start number `failures` + 1.

    The first failure after a healthy run restarts at once (a single crash should cost no
    more than a cold start); further failures in a row wait initial_delay, doubling each
    time up to max_delay.
    """
    if failures <= 1:
        return 0.0
    return min(restart.initial_delay * 2 ** (failures - 2), restart.max_delay)


class Supervisor(Reloading, Warming):
    def __init__(
        self,
        config: Config,
        launch: launcher.Launch,
        secrets: state.Secrets,
        started: subprocess.Popen[bytes] | Exception | None = None,
        early_signals: list[int] | None = None,
    ) -> None:
        """`secrets`: the token and cookie secret; `started`: JupyterLab if run.py has already
        started it (or why it could not), else None; `early_signals`: signals received before
        the loop could handle them."""
        self.config = config
        self.notifier = Notifier()
        self.launch = launch
        self.token, self.cookie_secret = secrets.token, secrets.cookie_secret
        self._replaced_from = secrets.replaced_from
        self._started = started
        self._early_signals = early_signals or []
        self.reaper = children.Reaper()
        self.keeper = Keeper(self.reaper, self._warm_changed)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.lab: Lab | None = None
        self.failures = 0
        self.attempt = 0
        self.stopping = False
        self.reloading = False  # RELOADING=1 sent, READY=1 still owed to systemd
        self.exit_code: int | None = None
        self.state: state.State | None = None
        self.figures = SupervisorView(__version__, config.lab.user)  # what metrics show
        self.exporter: Exporter | None = None

    # ── plumbing ────────────────────────────────────────────────────────────

    def post(self, event: Event) -> None:
        self.events.put_nowait(event)

    def _save(self, **changes: object) -> None:
        assert self.state is not None
        self.state = self.state.evolve(**changes)
        self.figures.config_error = self.state.config_error is not None
        state.write_state(self.config.service.state_dir, self.state)

    def _status_line(self) -> str:
        if self.lab is not None and self.lab.ready:
            launch = self.launch
            line = f"JupyterLab ready on {launch.url} as {launch.account.name} (pid {self.lab.pid})"
        else:
            line = f"JupyterLab {self.state.status} on {self.launch.url}"
        if self.state.config_error:
            line += "; configuration rejected, still using the previous one: "
            line += self.state.config_error
        elif self.state.reload_pending:
            line += f"; reload pending: {self.state.reload_pending}"
        return line

    # ── main loop ───────────────────────────────────────────────────────────

    async def run(self) -> int:
        try:
            return await self._run()
        except Exception:
            # A bug must not leave JupyterLab's kernels (and their GPU memory) behind.
            logger.exception("supervisor_failed")
            if self.lab is not None:
                await self.lab.stop("supervisor_failed", self.config.restart.stop_timeout)
            await self._sweep()
            return 1
        finally:
            self.keeper.close()
            if self.exporter is not None:
                self.exporter.stop()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            loop.add_signal_handler(signum, self.post, signal_event(signum))
        for signum in self._early_signals:  # arrived while jlservice was still importing
            self.post(signal_event(signum))
        self._init_state()
        self.exporter = Exporter(self.figures, self.config.metrics)
        self.exporter.start()
        watchdog = loop.create_task(self._watchdog()) if self.notifier.watchdog_interval else None
        logger.info(
            "supervisor_started",
            pid=os.getpid(),
            config=str(self.config.path or "built-in defaults"),
            user=self.config.lab.user,
            port=self.config.lab.port,
        )
        if self._replaced_from is not None:
            self._log_user_changed(self._replaced_from)
        if why := launcher.read_only_notebooks(self.launch):
            logger.warning("notebook_dir_read_only", problem=why)
        self._warn_risks()
        certificate_watch = loop.create_task(self._watch_certificate())
        await self._start(self._started)
        self._started = None
        # Only now: a JupyterLab that already exited must be reaped as itself, not an orphan.
        self.reaper.install(loop)
        self._watch_config(loop)  # after the spawn: importing watchdog need not delay it
        while self.exit_code is None:
            await self._handle(await self.events.get())
        certificate_watch.cancel()
        if watchdog:
            watchdog.cancel()
        if self.watcher:
            self.watcher.stop()
        return self.exit_code

    def _init_state(self) -> None:
        log.add_secret(self.token)
        me = os.getpid()
        self.state = state.State(
            token=self.token,
            **self.launch.published(),
            config_path=str(self.config.path) if self.config.path else None,
            supervisor_pid=me,
            supervisor_started_at=state.process_start_time(me),
            lab_uid=self.launch.account.uid,
        )
        self._save()

    async def _handle(self, event: Event) -> None:
        lab = self.lab
        current = lab is not None and getattr(event, "pid", None) == lab.pid
        match event:
            case ChildExited() if current:
                await self._on_exit(event.status)
            case LabReady() if current and not lab.ready and lab.stop_reason is None:
                self._on_ready()
            case LabUnhealthy() if current and lab.stop_reason is None:
                logger.warning("lab_unhealthy", pid=lab.pid, problem=event.problem)
                self.notifier.watchdog()  # jlservice acts on it; systemd need not
                self._save(last_error=f"JupyterLab stopped answering: {event.problem}")
                await self._stop_lab("unhealthy")
            case StartTimedOut() if current and not lab.ready and lab.stop_reason is None:
                timeout = self.config.restart.start_timeout
                logger.error("lab_start_timeout", pid=lab.pid, timeout_s=timeout)
                self._save(last_error=f"JupyterLab did not answer within {timeout:g} s")
                await self._stop_lab("start_timeout")
            case BackoffElapsed() if event.attempt == self.attempt and not self.stopping:
                await self._start()
            case StopRequested():
                await self._on_stop(event.signal)
            case RotateRequested() if not self.stopping:
                await self._on_rotate()
            case ReloadRequested() if not self.stopping:
                await self._on_reload(event.source)
            case PendingReloadDue() if self.pending and event.generation == self.pending.generation:
                self.notifier.reloading()
                await self._restart_with(self.pending.launch)
            case _:
                logger.debug("event_ignored", ignored=repr(event))

    # ── starting ────────────────────────────────────────────────────────────

    async def _start(self, started: subprocess.Popen[bytes] | Exception | None = None) -> None:
        """Start JupyterLab, or take charge of the one `jlservice run` started before the
        supervisor existed (`started`: its process, or why it could not start)."""
        self.attempt += 1
        if self.pending is not None:  # any restart applies the reload that waited for idle
            self._use_launch(self.pending.launch)
        try:
            if isinstance(started, Exception):
                raise started
            if started is not None:  # by run.py, before the supervisor existed
                began, warm = None, False
                pid, stdout = launcher.detach(started)
            else:
                began = time.time()
                pid, stdout, warm = await self._spawn_lab()
        except (launcher.CannotStartNow, launcher.LaunchError) as exc:
            logger.error("lab_start_failed", problem=str(exc))
            if isinstance(exc, launcher.CannotStartNow):
                self._failed(str(exc), "crash")
                return
            self._save(status=state.FAILED, last_error=str(exc))
            self.notifier.status(f"Failed: {exc}")
            self.exit_code = EX_CONFIG
            return
        self.lab = await Lab.adopt(
            pid,
            stdout,
            self.launch,
            self.reaper,
            self.post,
            self.config.restart.start_timeout,
            started=began,
        )
        self._save(
            status=state.STARTING,
            lab_pid=pid,
            started_at=time.time(),
            ready_at=None,
            token=self.token,
            started_warm=warm,
        )
        self.notifier.status(
            f"Starting JupyterLab on {self.launch.url} as {self.launch.account.name}"
        )
        logger.info(
            "lab_starting", pid=pid, user=self.launch.account.name, port=self.launch.port, warm=warm
        )

    def _on_ready(self) -> None:
        lab = self.lab
        assert lab is not None
        ready_s = lab.mark_ready(self.launch.api_url, lambda: self.config.health, self.post)
        self._keep_warm()  # only now: its imports must not slow the start down
        self._save(status=state.READY, ready_at=time.time(), last_error=None)
        launch = self.launch
        endpoint = Endpoint(
            launch.api_url, self.token, lab.pid, launch.account.uid, str(launch.jupyter_runtime_dir)
        )
        self.figures.lab_ready(endpoint, lab.started, ready_s, lambda: lab.answering)
        self.reloading = False
        self.notifier.ready(self._status_line())
        logger.info("lab_ready", pid=lab.pid, url=self.launch.url, ready_s=round(ready_s, 3))
        if sys.stdout.isatty():
            print(f"JupyterLab is ready: {state.login_url(self.state)}", flush=True)
        # The previous JupyterLab's Lab, probes and transports are cyclic garbage: free it
        # now, off the start's path, rather than let a service that restarts often grow.
        gc.collect()

    def _warn_risks(self) -> None:
        """Log what is allowed but risky: no login for the other people with accounts here,
        a wildcard allow_origin, an expiring certificate."""
        lab = self.config.lab
        problem = open_to_local_users(lab, self.config.auth, self.config.account.uid)
        if problem:
            logger.warning("open_to_local_users", problem=problem)
        for problem in risks(lab.options, lab.user):
            logger.warning("config_risky", problem=problem)
        self._warn_certificate()

    def _warn_certificate(self) -> None:
        """The certificate's expiry, for the log from 30 days before and for the metrics."""
        self.figures.tls_cert_expiry = None
        if self.config.tls.enabled:
            from jlservice import tls

            self.figures.tls_cert_expiry = tls.expiry(self.config.tls.cert_pem)
            problem = tls.expiry_warning(self.config.tls.cert_pem)
            if problem:
                logger.warning("tls_certificate_expiring", problem=problem)

    async def _watch_certificate(self) -> None:
        """A service runs for months: from 30 days before expiry, say so again each day."""
        while True:
            await asyncio.sleep(86400)
            self._warn_certificate()

    async def _watchdog(self) -> None:
        """WATCHDOG=1, except while JupyterLab fails its probes and jlservice has not acted.

        [health] defaults detect a hang well inside systemd's WatchdogSec, so jlservice
        replaces JupyterLab itself; systemd steps in only if jlservice does not.
        """
        interval = self.notifier.watchdog_interval
        assert interval is not None
        while True:
            lab = self.lab
            if lab is None or lab.answering or lab.stop_reason is not None:
                self.notifier.watchdog()
            await asyncio.sleep(interval)

    # ── stopping and exits ──────────────────────────────────────────────────

    async def _stop_lab(self, reason: str) -> None:
        self.figures.lab_down()
        if self.lab is not None and not self.lab.exited.done():
            self._save(status=state.STOPPING)
            await self.lab.stop(reason, self.config.restart.stop_timeout)

    async def _on_exit(self, status: children.ExitStatus) -> None:
        lab = self.lab
        assert lab is not None
        lab.cancel_watchers()
        self.lab = None
        self.figures.lab_down()
        # Not ready from now on: until the next start, anyone may take the port.
        self._save(status=state.STOPPING, lab_pid=None)
        reason = lab.stop_reason or "crash"
        (logger.info if lab.stop_reason else logger.error)(
            "lab_exited", pid=lab.pid, status=status.describe(), reason=reason
        )
        swept = await self._sweep()
        if swept:
            logger.info("leftovers_ended", count=swept)
        last_words = await lab.drain_output()
        last_exit = state.LastExit(
            code=status.code, signal=status.signal, at=time.time(), reason=reason
        )
        self._save(last_exit=last_exit)
        if self.stopping:
            return self._finish()
        if reason in ("rotate", "reload"):  # asked for: not a failure
            self.figures.restarted(reason)
            self._save(restarts=self.state.restarts + 1)
            return await self._start()
        if reason == "crash":
            problem = f"JupyterLab {status.describe()}"
            if not lab.ready:
                problem += f" during start-up: {last_words or 'no output'}"
                if self.state.started_warm:  # maybe the fork's fault: the next start is cold
                    why = f"a JupyterLab it forked {status.describe()} starting"
                    self.keeper.distrust(self.launch, why)
        else:
            problem = self.state.last_error or status.describe()
        healthy_for = time.time() - lab.ready_at if lab.ready_at is not None else 0.0
        if healthy_for >= self.config.restart.reset_after:
            self.failures = 0
        self._failed(problem, reason)

    def _failed(self, problem: str, reason: str) -> None:
        """Count a failure; restart after the backoff delay or give up."""
        self.failures += 1
        restart = self.config.restart
        if self.reloading:  # systemd waits for the end of the reload: it has ended, badly
            self.reloading = False
            self.notifier.ready(f"Reloaded, but JupyterLab failed to start: {problem}")
        if self.failures >= restart.max_failures:
            message = f"gave up after {self.failures} failed starts in a row: {problem}"
            logger.error("supervisor_giving_up", failures=self.failures, problem=problem)
            self._save(status=state.FAILED, last_error=message)
            self.notifier.status(f"Failed: {message}")
            self.exit_code = 1
            return
        delay = backoff_delay(self.failures, restart)
        self.figures.restarted(reason)
        self._save(status=state.BACKOFF, last_error=problem, restarts=self.state.restarts + 1)
        self.notifier.status(f"Restarting JupyterLab in {delay:g} s: {problem}")
        logger.info("lab_restart_scheduled", delay_s=delay, failures=self.failures)
        asyncio.get_running_loop().call_later(delay, self.post, BackoffElapsed(self.attempt))

    async def _on_stop(self, signame: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._drop_pending()
        logger.info("supervisor_stopping", signal=signame)
        self.notifier.stopping("Stopping JupyterLab")
        self.keeper.close()
        self._save(status=state.STOPPING)
        if self.lab is not None:
            await self._stop_lab("stop")  # its ChildExited event finishes the stop
        else:
            await self._sweep()
            self._finish()

    async def _sweep(self) -> int:
        """End what JupyterLab left behind; the warm parent is not a leftover."""
        return await children.sweep(
            self.reaper, grace=self.config.restart.stop_timeout, spare=self.keeper.spare()
        )

    def _finish(self) -> None:
        self._save(status=state.STOPPED, lab_pid=None, reload_pending=None)
        logger.info("supervisor_stopped")
        self.exit_code = 0

    async def _on_rotate(self) -> None:
        self._new_secrets()
        logger.info("token_rotated")
        if self.lab is not None:
            await self._stop_lab("rotate")

    def _new_secrets(self) -> None:
        """A new token and cookie secret for the current launch's user, saved at once: a
        replaced token must never come back."""
        self.token = state.new_token()
        self.cookie_secret = state.new_cookie_secret()
        log.add_secret(self.token)
        state.write_cookie_secret(self.config.service.state_dir, self.cookie_secret)
        self._save(token=self.token, lab_uid=self.launch.account.uid)

    def _log_user_changed(self, old: str) -> None:
        account = self.launch.account
        logger.warning(
            "lab_user_changed",
            old=old,
            new=f"{account.name} (uid {account.uid})",
            effect="token and cookie secret rotated; the old user's runtime files removed",
        )
