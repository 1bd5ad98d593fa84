"""The supervisor's state machine: one asyncio loop, one event queue, one `_handle`.

    phase       event                          next
    STARTING    LabReady                       READY
    STARTING    exit                           BACKOFF   (a failed start)
    STARTING    StartTimedOut, reload, rotate  RESTARTING
    READY       exit                           BACKOFF   (no wait after a healthy run)
    READY       LabUnhealthy, reload, rotate   RESTARTING
    RESTARTING  exit                           STARTING  (reload, rotate) or BACKOFF
    BACKOFF     BackoffElapsed, reload         STARTING
    any         StopRequested                  STOPPING, and Halt(0) once it has exited

Every exit is followed by a sweep of what JupyterLab left behind; too many failed starts in
a row, or a launch the configuration makes impossible, Halt with an error status.

Everything that happens arrives as an event (supervisor.events): signals, the child reaper,
JupyterLab's probes, timers, the file watcher, the warm parent's keeper. The collaborators in
`Parts` do the work and speak back only by posting events; the Publisher is the one writer
of state.json, sd_notify and the metrics view. `Halt` is the one way out of the loop.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import signal
import sys
import time

from jlservice import EX_CONFIG, log, state
from jlservice.config import Config
from jlservice.errors import CannotStartNow, Halt, LaunchError, WaitingFor
from jlservice.labapi import Endpoint
from jlservice.start import Secrets, launcher
from jlservice.supervisor import children, credentials, policy, reload, risks
from jlservice.supervisor import events as ev
from jlservice.supervisor.children import ExitStatus
from jlservice.supervisor.parts import Lab, Parts

logger = log.get("jlservice.supervisor")

CERTIFICATE_CHECK_S = 86400.0  # a service runs for months: look at the expiry daily


class Phase(enum.Enum):
    STARTING = "starting"  # a JupyterLab runs; not answering yet
    READY = "ready"  # it answers
    RESTARTING = "restarting"  # it is being stopped on purpose; its exit starts the next
    BACKOFF = "backoff"  # none runs; BackoffElapsed starts the next
    STOPPING = "stopping"  # jlservice stops; the last exit halts the loop


class Supervisor:
    def __init__(
        self,
        config: Config,
        launch: launcher.Launch,
        secrets: Secrets,
        parts: Parts,
        events: asyncio.Queue[ev.Event],
    ) -> None:
        """`events`: where the parts post what happens."""
        self.config = config
        self.launch = launch
        self.secrets = secrets
        self.parts = parts
        self.publish = parts.publisher
        self.events = events
        self.phase = Phase.STARTING
        self.lab: Lab | None = None
        self.failures = 0  # failed starts in a row
        self.crashes = policy.CrashHistory()  # of ready servers
        self.waiting = policy.Waiting()
        self.attempt = 0  # which start a BackoffElapsed is for
        self.reloads = parts.reloads  # the reload planner
        self.in_start = False  # the starter is at work: events wait until it returns

    def post(self, event: ev.Event) -> None:
        self.events.put_nowait(event)
        if self.in_start and isinstance(
            event, (ev.StopRequested, ev.ReloadRequested, ev.RotateRequested)
        ):
            self.parts.warm.hurry()  # a start must not keep a command waiting

    # ── the loop ────────────────────────────────────────────────────────────

    async def run(self, early_signals: list[int] = ()) -> int:
        """Start JupyterLab and keep it running until a stop; returns the exit status."""
        loop = asyncio.get_running_loop()
        ev.post_signals(loop, self.post, early_signals)
        interval = self.parts.watchdog_interval
        watchdog = loop.create_task(self.publish.feed_watchdog(interval, self._hung))
        try:
            risks.started(self.config, self.launch)
            self._check_certificate()
            await self._start()
            # Only now: a JupyterLab that already exited must be reaped as itself.
            self.parts.start_reaping()
            self.parts.follower.follow(self.config)  # after the spawn: watchdog's import
            while True:
                await self._handle(await self.events.get())
        except Halt as halt:
            if halt.code != 0:  # giving up: kept kernels must not outlive jlservice either
                self.parts.kernels.stopping()
                await self._sweep()
            return halt.code
        except Exception:
            # A bug must not leave JupyterLab's kernels (and their GPU memory) behind.
            logger.exception("supervisor_failed")
            self.parts.kernels.stopping()
            if self.lab is not None:
                await self.lab.stop("supervisor_failed", self.config.restart.stop_timeout)
            await self._sweep()
            return 1
        finally:
            watchdog.cancel()
            self.parts.close()

    async def _handle(self, event: ev.Event) -> None:
        lab, phase = self.lab, self.phase
        current = lab is not None and getattr(event, "pid", None) == lab.pid
        match event:
            case ev.ChildExited() if current:
                await self._on_exit(event.status)
            case ev.LabReady() if current and phase is Phase.STARTING:
                self._on_ready()
            case ev.LabUnhealthy() if current and phase is Phase.READY:
                logger.warning("lab_unhealthy", pid=lab.pid, problem=event.problem)
                self.publish.watchdog()  # jlservice acts on it; systemd need not
                await self._replace(f"JupyterLab stopped answering: {event.problem}", "unhealthy")
            case ev.StartTimedOut() if current and phase is Phase.STARTING:
                timeout = self.config.restart.start_timeout
                logger.error("lab_start_timeout", pid=lab.pid, timeout_s=timeout)
                await self._replace(
                    f"JupyterLab did not answer within {timeout:g} s", "start_timeout"
                )
            case ev.BackoffElapsed() if phase is Phase.BACKOFF and event.attempt == self.attempt:
                await self._start()
            case ev.StopRequested() if phase is not Phase.STOPPING:
                await self._on_stop(event.signal)
            case ev.RotateRequested() if phase is not Phase.STOPPING:
                await self._on_rotate()
            case ev.ReloadRequested() if phase is not Phase.STOPPING:
                await self._on_reload(event.source)
            case ev.PendingReloadDue() if self.reloads.due(event.generation):
                self.publish.reload_started()
                await self._restart_with(self.reloads.take())
            case ev.WarmParentChanged():
                self.publish.warm_parent(self.parts.warm.describe())
            case ev.KernelsListed():
                self.parts.kernels.listed(event)
            case ev.KernelGraceElapsed() if late := self.parts.kernels.expire(event.generation):
                await self.parts.end(late, self.config.restart.stop_timeout)
            case ev.KernelsChanged():
                kernels = self.parts.kernels
                self.publish.kernels(kernels.describe(), kernels.adopted_total, kernels.lost)
            case ev.NotebookEvent():
                self.publish.notebook_event(event, self.config.metrics.interval)
            case ev.CertificateCheckDue():
                self._check_certificate()
            case _:
                logger.debug("event_ignored", ignored=repr(event), phase=phase.value)

    # ── starting ────────────────────────────────────────────────────────────

    async def _start(self) -> None:
        """STARTING: start the current launch, or BACKOFF / Halt if it cannot start."""
        self.attempt += 1
        if (deferred := self.reloads.take()) is not None:  # any restart applies it
            self._use_launch(deferred)
        if self.parts.kernels.prepare(self.launch):  # kept for another user: ended first
            await self._sweep()
        self.in_start = True
        try:
            started = await self.parts.starter.start(self.launch, self.secrets)
        except WaitingFor as exc:
            return self._wait_for(exc)
        except CannotStartNow as exc:
            logger.error("lab_start_failed", problem=str(exc))
            return self._failed(str(exc), "crash")
        except LaunchError as exc:
            logger.error("lab_start_failed", problem=str(exc))
            self.publish.failed(str(exc))
            raise Halt(EX_CONFIG) from None
        finally:
            self.in_start = False
        if (cleared := self.waiting.end()) is not None:
            logger.info(cleared.cleared, waited_for=cleared.what)
        self.lab = await self.parts.adopt(started, self.launch, self.config.restart.start_timeout)
        self.phase = Phase.STARTING
        self.publish.starting(self.launch, started.pid, started.warm)
        logger.info(
            "lab_starting",
            pid=started.pid,
            user=self.launch.account.name,
            port=self.launch.port,
            warm=started.warm,
        )

    def _on_ready(self) -> None:
        """STARTING → READY."""
        lab = self.lab
        assert lab is not None
        ready_s = lab.mark_ready(lambda: self.config.health)
        self.phase = Phase.READY
        if not self.publish.record.started_warm:
            self.parts.warm.cold_start_took(ready_s)
        self.parts.warm.keep(self.launch, self.config.restart.warm)  # now: its imports
        endpoint = Endpoint.of(self.launch, self.secrets.token, lab.pid)
        # With what the warm keeper just did (a check, a new warm parent): whoever reads "ready"
        # must not take a warm parent that is checking for one that can serve.
        warm = self.parts.warm.describe()
        self.publish.ready(self.launch, endpoint, lab.started, ready_s, lambda: lab.answering, warm)
        self.parts.kernels.ready(endpoint)
        logger.info("lab_ready", pid=lab.pid, url=self.launch.url, ready_s=round(ready_s, 3))
        if sys.stdout.isatty():
            print(f"JupyterLab is ready: {state.login_url(self.publish.record)}", flush=True)
        # The previous JupyterLab's Lab, probes and transports are cyclic garbage: free it
        # now, off the start's path, rather than let a service that restarts often grow.
        gc.collect()

    # ── stopping JupyterLab, and its exit ───────────────────────────────────

    async def _replace(self, problem: str | None, reason: str) -> None:
        """READY or STARTING → RESTARTING: stop JupyterLab; its exit starts the next one."""
        if problem is not None:
            self.publish.trouble(problem)
        self.phase = Phase.RESTARTING
        await self._stop_lab(reason)

    async def _stop_lab(self, reason: str) -> None:
        lab = self.lab
        if lab is not None and not lab.exited.done():
            self.parts.kernels.lab_stopping(self.launch, self._keeps_kernels())
            self.publish.lab_stopping()
            if not await lab.stop(reason, self.config.restart.stop_timeout):
                # Frozen, or stuck in the kernel: go on as if it had exited (if it ever
                # does, that exit is no longer the current JupyterLab's).
                logger.error("lab_unkillable", pid=lab.pid, state=children.state_of(lab.pid))
                self.post(ev.ChildExited(lab.pid, ExitStatus(lab.pid, None, signal.SIGKILL)))

    async def _on_exit(self, status: ExitStatus) -> None:
        """JupyterLab exited: end its leftovers, then start again, back off, or halt."""
        lab = self.lab
        assert lab is not None
        lab.cancel_watchers()
        self.lab = None
        reason = lab.stop_reason or "crash"
        (logger.info if lab.stop_reason else logger.error)(
            "lab_exited", pid=lab.pid, status=status.describe(), reason=reason
        )
        self.publish.lab_exited(
            state.LastExit(code=status.code, signal=status.signal, at=time.time(), reason=reason)
        )
        kept = self.parts.kernels.exited(
            self.launch, self._keeps_kernels(), self.parts.warm.spare(), self.config.kernels.grace
        )
        swept = await self._sweep(kept)
        if swept:
            logger.info("leftovers_ended", count=swept)
        self.publish.stuck(self.parts.stuck())
        last_words = await lab.drain_output()
        if self.phase is Phase.STOPPING:
            return self._finish()
        if reason in ("rotate", "reload"):  # asked for: not a failure
            self.publish.restarting(reason)
            return await self._start()
        if reason == "crash":
            problem = f"JupyterLab {status.describe()}"
            if not lab.ready:
                problem += f" during start-up: {last_words or 'no output'}"
                if self.publish.record.started_warm:  # maybe the fork's fault: start cold
                    why = f"a JupyterLab it forked {status.describe()} starting"
                    self.parts.warm.distrust(self.launch, why)
        else:
            problem = self.publish.record.last_error or status.describe()
        if lab.ready:
            if not self.crashes.storm(time.monotonic(), self.config.restart):
                self.failures = 0  # it started fine: the next start is at once
            else:
                logger.warning("lab_crash_storm", crashes=len(self.crashes))
        self._failed(problem, reason)

    def _failed(self, problem: str, reason: str) -> None:
        """→ BACKOFF, or Halt(1) after max_failures failed starts in a row."""
        self.failures += 1
        restart = self.config.restart
        if self.failures >= restart.max_failures:
            logger.error("supervisor_giving_up", failures=self.failures, problem=problem)
            self.publish.failed(f"gave up after {self.failures} failed starts in a row: {problem}")
            raise Halt(1)
        delay = policy.backoff_delay(self.failures, restart)
        self.phase = Phase.BACKOFF
        self.publish.backoff(delay, problem, reason)
        logger.info("lab_restart_scheduled", delay_s=delay, failures=self.failures)
        self.parts.later(delay, ev.BackoffElapsed(self.attempt))

    def _wait_for(self, cause: WaitingFor) -> None:
        """→ BACKOFF until `cause` clears (another program's port, a notebook dir that does
        not answer): not a failed start, and it may clear at any time."""
        delay, news = self.waiting.again(cause, self.config.restart)
        if news:
            logger.warning(cause.found, problem=str(cause))
        self.phase = Phase.BACKOFF
        self.publish.waiting(delay, cause)
        self.parts.later(delay, ev.BackoffElapsed(self.attempt))

    async def _sweep(self, spare: set[int] = frozenset()) -> int:
        """End what JupyterLab left behind but `spare`; the warm parent and the kept kernels
        are not leftovers."""
        spare = self.parts.warm.spare() | self.parts.kernels.spare() | spare
        return await self.parts.sweep(spare, self.config.restart.stop_timeout)

    def _keeps_kernels(self) -> bool:
        """Whether kernels outlive the JupyterLab that exits now (a stop ends them)."""
        return self.config.kernels.survive_restarts and self.phase is not Phase.STOPPING

    # ── commands: stop, rotate ──────────────────────────────────────────────

    async def _on_stop(self, signame: str) -> None:
        """Any phase → STOPPING; halts once JupyterLab and its leftovers are gone."""
        self.phase = Phase.STOPPING
        self.reloads.drop()
        logger.info("supervisor_stopping", signal=signame)
        self.publish.stopping()
        self.parts.kernels.stopping()
        self.parts.warm.close()
        if self.lab is not None:
            await self._stop_lab("stop")  # its ChildExited event finishes the stop
        else:
            await self._sweep()
            self._finish()

    def _finish(self) -> None:
        self.publish.stopped()
        logger.info("supervisor_stopped")
        raise Halt(0)

    def _new_secrets(self) -> None:
        self.secrets = credentials.renew(self.config.service.state_dir)
        self.publish.token_rotated(self.secrets, self.launch.account.uid)

    async def _on_rotate(self) -> None:
        """A new token and cookie secret; JupyterLab restarts with them (or starts with them
        after the backoff)."""
        self._new_secrets()
        logger.info("token_rotated")
        if self.lab is not None:
            await self._replace(None, "rotate")

    # ── reloads ─────────────────────────────────────────────────────────────

    async def _on_reload(self, source: str) -> None:
        """Read the file again: reject it, apply what JupyterLab never sees, and restart
        JupyterLab if its launch changed (now, or once the kernels are idle)."""
        self.publish.reload_started()
        plan = self.reloads.plan(self.config, self.launch)
        if plan.result == reload.REJECTED:
            self.publish.reload_rejected(source, plan.error)
            logger.error("config_rejected", source=source, problem=plan.error)
            return self._reload_done()
        self._reconfigure(plan.config)
        if plan.result == reload.UNCHANGED:
            self.reloads.drop()
            self.launch = plan.launch  # may differ in what JupyterLab never sees (public_url)
            self.publish.reload_unchanged(source, plan.launch)
            logger.info("config_reloaded", source=source, result=plan.result)
            return self._reload_done()
        if self.config.reload.when == "idle" and self.phase is Phase.READY:
            left = self.reloads.defer(
                plan, self.launch, self.secrets.token, lambda: self.lab.pid if self.lab else None
            )
            logger.info("config_reload_pending", source=source, max_wait_s=round(left, 1))
            self.publish.reload_pending(source, "waiting for busy kernels to finish")
            return self._reload_done()
        self.publish.reload_applied(source)
        logger.info("config_reloaded", source=source, result=plan.result)
        await self._restart_with(plan.launch)

    def _reload_done(self) -> None:
        ready = self.lab.pid if self.phase is Phase.READY and self.lab else None
        self.publish.reload_done(self.launch, ready)

    def _reconfigure(self, new: Config) -> None:
        """Settings JupyterLab never sees take effect at once."""
        limits = self.reloads.apply(self.config, new)
        self.config = new
        self.publish.limits(limits)
        if self.phase is Phase.READY or not new.restart.warm:
            self.parts.warm.keep(self.launch, new.restart.warm)  # warm turned on or off
        risks.warn_about_config(new)
        self.publish.certificate_expiry(risks.certificate_expiry(new))

    async def _restart_with(self, launch: launcher.Launch) -> None:
        self._use_launch(launch)
        self.publish.reload_restarting()
        if self.lab is not None:
            await self._replace(None, "reload")
        else:  # waiting in backoff: a new configuration deserves a fresh start now
            self.failures = 0
            await self._start()

    def _use_launch(self, launch: launcher.Launch) -> None:
        """From now on start `launch` (the one a pending reload waited to apply, if any)."""
        self.reloads.drop()
        previous, self.launch = self.launch, launch
        if launch.account.uid != previous.account.uid:  # the old user holds the secrets
            self._new_secrets()
            old = f"{previous.account.name} (uid {previous.account.uid})"
            credentials.log_user_changed(old, launch.account)
        risks.warn_about_launch(launch)
        self.publish.launch_changed(launch)

    # ── the certificate and the watchdog ────────────────────────────────────

    def _hung(self) -> bool:
        """JupyterLab fails its probes and jlservice has not acted yet: systemd's watchdog
        must then fire if jlservice never does (its [health] defaults act well before)."""
        lab = self.lab
        return lab is not None and not lab.answering and lab.stop_reason is None

    def _check_certificate(self) -> None:
        self.publish.certificate_expiry(risks.certificate_expiry(self.config))
        self.parts.later(CERTIFICATE_CHECK_S, ev.CertificateCheckDue())
