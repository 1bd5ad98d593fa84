"""The one writer of what the supervisor tells the world.

Three readers see the supervisor from outside: `jlservice status`/`token` read state.json,
systemd reads sd_notify (READY, RELOADING, STATUS, WATCHDOG, STOPPING), Prometheus reads the
metrics view. The loop calls one method here per thing that happened, and that method
updates all three, so they never disagree.

state.json that cannot be written (a full or read-only disk, a deleted directory) stops
nothing: the supervisor runs on, says so (log, metrics, and a copy of the record in the
runtime dir that `jlservice status` reads), and writes it again as soon as it can. A state dir
deleted under it is made again with the login secrets in use, so that the next start of
jlservice keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from jlservice import files, log, login, notebooks_file, state
from jlservice.errors import PortInUse, WaitingFor
from jlservice.labapi import Endpoint
from jlservice.metrics import table
from jlservice.metrics.sampler import Snapshot
from jlservice.metrics.view import SupervisorView
from jlservice.start.launcher import Launch
from jlservice.supervisor import reload
from jlservice.supervisor.events import KernelCulled, NotebookEvent, NotebooksSampled, OomKilled
from jlservice.supervisor.notify import Notifier

logger = log.get("jlservice.supervisor")

RETRY_S = 5.0  # how soon a state.json that could not be written is tried again


class StateSink(Protocol):
    path: Path

    def write(self, record: state.State, secrets: login.Secrets) -> None: ...  # raises OSError
    def write_spare(self, record: state.State) -> None: ...  # best effort
    def drop_spare(self) -> None: ...
    def write_notebooks(self, table: dict[str, object]) -> None: ...  # best effort


class StateFile:
    """state.json in the state dir, replaced atomically (never torn: a failed write leaves the
    last good one); the spare copy goes to the runtime dir."""

    def __init__(self, state_dir: Path, runtime_dir: Path) -> None:
        self.state_dir = state_dir
        self.runtime_dir = runtime_dir
        self.path = state_dir / state.STATE_FILE

    def write(self, record: state.State, secrets: login.Secrets) -> None:
        if not self.state_dir.is_dir():  # deleted under us: make it again, with what is in use
            files.ensure_dir(self.state_dir, 0o700)
            login.save_secrets(self.state_dir, *secrets)
        state.write_state(self.state_dir, record)

    def write_spare(self, record: state.State) -> None:
        with contextlib.suppress(OSError):  # the log and the metrics still say it
            state.write_state(self.runtime_dir, record)

    def drop_spare(self) -> None:
        (self.runtime_dir / state.STATE_FILE).unlink(missing_ok=True)

    def write_notebooks(self, table: dict[str, object]) -> None:
        with contextlib.suppress(OSError):  # the metrics still say it
            notebooks_file.write(self.runtime_dir, table)


class Publisher:
    def __init__(
        self,
        sink: StateSink,
        notifier: Notifier,
        view: SupervisorView,
        record: state.State,
        secrets: login.Secrets,
        later: Callable[[float, Callable[[], None]], object],
    ) -> None:
        """`secrets`: those in use (`record` has the token); `later(delay, callback)`: call
        back after a delay (a retry of state.json)."""
        self.record = record
        self._secrets = secrets
        self.view = view
        self.write_problem: str | None = None  # why state.json cannot be written now
        self._sink = sink
        self._notifier = notifier
        self._later = later
        self._retrying = False
        self._owes_ready = False  # RELOADING=1 sent, READY=1 not yet
        self._announced = False  # READY=1 sent once: systemd's start job is done
        self._notebooks: tuple[Snapshot, float] | None = None  # the sampler's last round
        self._killed_since: set[str] = set()  # kernels with an OOM kill since the last round
        self._save()

    # ── one JupyterLab's life ───────────────────────────────────────────────

    def starting(self, launch: Launch, pid: int, warm: bool) -> None:
        self.view.port_in_use = False
        self.view.notebook_dir = launch.cwd
        self._save(
            status=state.STARTING,
            lab_pid=pid,
            started_at=time.time(),
            ready_at=None,
            started_warm=warm,
        )
        self._notifier.status(f"Starting JupyterLab on {launch.url} as {launch.account.name}")

    def ready(
        self,
        launch: Launch,
        endpoint: Endpoint,
        started_at: float,
        ready_s: float,
        answering: Callable[[], bool],
        warm_parent: state.WarmParent | None,
    ) -> None:
        """`warm_parent`: as the keeper has it now, in the same record (one that checks
        itself at ready cannot serve the next start yet)."""
        self.view.warm_parent = warm_parent
        self._save(
            status=state.READY, ready_at=time.time(), last_error=None, warm_parent=warm_parent
        )
        self.view.lab_ready(endpoint, started_at, ready_s, answering)
        self._owes_ready = False
        self._announce(self._status_line(launch, endpoint.pid))

    def trouble(self, problem: str) -> None:
        """Something is wrong with JupyterLab that jlservice acts on now."""
        self._save(last_error=problem)

    def lab_stopping(self) -> None:
        self.view.lab_down()
        self._save(status=state.STOPPING)

    def lab_exited(self, last_exit: state.LastExit) -> None:
        """JupyterLab has exited; what it left behind is being ended."""
        self.view.lab_down()
        self._save(status=state.STOPPING, lab_pid=None, last_exit=last_exit)

    def restarting(self, reason: str) -> None:
        """JupyterLab is started again on purpose (reload, rotate)."""
        self.view.restarted(reason)
        self._save(restarts=self.record.restarts + 1)

    def backoff(self, delay: float, problem: str, reason: str) -> None:
        self._end_reload_badly(problem)
        self.view.restarted(reason)
        self._save(status=state.BACKOFF, last_error=problem, restarts=self.record.restarts + 1)
        self._notifier.status(f"Restarting JupyterLab in {delay:g} s: {problem}")

    def waiting(self, delay: float, cause: WaitingFor) -> None:
        problem = str(cause)
        self._end_reload_badly(problem)
        self.view.port_in_use = isinstance(cause, PortInUse)
        self._save(status=state.BACKOFF, last_error=problem)
        status = f"Waiting for {cause.what}, trying again in {delay:g} s: {problem}"
        if self._announced:
            self._notifier.status(status)
        else:  # the service is up, waiting: systemd's start must not time out over it
            self._announce(status)

    def failed(self, message: str) -> None:
        """jlservice gives up: the last words, before it exits."""
        self._end_reload_badly(message)
        self._save(status=state.FAILED, last_error=message)
        self._notifier.status(f"Failed: {message}")

    # ── the service ─────────────────────────────────────────────────────────

    def stopping(self) -> None:
        self._notifier.stopping("Stopping JupyterLab")
        self._save(status=state.STOPPING)

    def stopped(self) -> None:
        self._save(status=state.STOPPED, lab_pid=None, reload_pending=None)

    def stuck(self, pids: list[int]) -> None:
        """Processes SIGKILL did not end, left behind (state.json, status, metrics)."""
        self.view.stuck_processes = len(pids)
        if tuple(pids) != self.record.stuck_pids:
            self._save(stuck_pids=tuple(pids))

    def token_rotated(self, secrets: login.Secrets, lab_uid: int) -> None:
        """New secrets, handed to `lab_uid` (at once: a rotated token must never come back)."""
        self._secrets = secrets
        self._save(token=secrets.token, lab_uid=lab_uid)

    def warm_parent(self, parent: state.WarmParent | None) -> None:
        self.view.warm_parent = parent
        self._save(warm_parent=parent)

    def kernels(self, kept: state.KeptKernels, adopted_total: int, lost: dict[str, int]) -> None:
        """Kernels kept across the last restart, and in all: adopted, lost by reason."""
        self.view.kernels_adopted = adopted_total
        self.view.kernels_lost = dict(lost)
        if kept != self.record.kernels:
            self._save(kernels=kept)

    def notebook_event(self, event: NotebookEvent, interval: float) -> None:
        match event:
            case NotebooksSampled():
                self._forget_kills(event.snapshot)
                self.notebooks(event.snapshot, interval)
            case OomKilled():
                self.oom_killed(event)
            case KernelCulled():
                self.kernel_culled(event)

    def notebooks(self, snapshot: Snapshot, interval: float) -> None:
        """The sampler's round: what each notebook uses, for `status --json` and `top`."""
        self._notebooks = (snapshot, interval)
        self._sink.write_notebooks(table.table(snapshot, self.view, interval))

    def _forget_kills(self, snapshot: Snapshot) -> None:
        """The OOM kills of kernels JupyterLab no longer has (their series end); a kill told
        since the round began may be of a kernel too new for it, and stays."""
        if snapshot.kernel_states is not None:
            kept = snapshot.kernels | self._killed_since
            self.view.oom_kills = {k: v for k, v in self.view.oom_kills.items() if k in kept}
        self._killed_since = set()

    def limits(self, said: str) -> None:
        """Whether [kernels] memory_max holds, and why not (status, doctor, notebooks.json)."""
        if not said:
            return
        self.view.limits = {"on": said.startswith("on:"), "said": said}
        if said != self.record.limits:
            self._save(limits=said)

    def oom_killed(self, kill: OomKilled) -> None:
        """The OOM killer ended a process of this service: metrics, state, the table."""
        self.view.oom_kills_total += 1
        if kill.kernel_id is not None:
            self._killed_since.add(kill.kernel_id)
            _, count = self.view.oom_kills.get(kill.kernel_id, ("", 0))
            self.view.oom_kills[kill.kernel_id] = (kill.notebook, count + 1)
        last = state.OomKill(
            time.time(),
            kill.pid,
            kill.process,
            kill.kernel_id,
            kill.notebook,
            kill.memory_bytes,
            kill.limit_bytes,
        )
        self._save(oom_kills=self.record.oom_kills + 1, last_oom_kill=last)
        if self._notebooks is not None:
            self.notebooks(*self._notebooks)

    def kernel_culled(self, culled: KernelCulled) -> None:
        self.view.culled += 1
        self.view.culled_gpu_bytes += culled.gpu_memory_bytes

    def certificate_expiry(self, expiry: float | None) -> None:
        self.view.tls_cert_expiry = expiry

    def watchdog(self) -> None:
        self._notifier.watchdog()

    async def feed_watchdog(self, interval: float | None, hung: Callable[[], bool]) -> None:
        """WATCHDOG=1 every `interval` seconds, except while `hung()`; None: systemd does
        not ask for it."""
        while interval:
            if not hung():
                self._notifier.watchdog()
            await asyncio.sleep(interval)

    # ── reloads: RELOADING=1 … READY=1 around each ──────────────────────────

    def reload_started(self) -> None:
        self._notifier.reloading()

    def reload_rejected(self, source: str, error: str) -> None:
        self.view.reloaded(reload.REJECTED)
        last = self._answer(source, reload.REJECTED)
        self._save(config_error=error, last_reload=last)

    def reload_unchanged(self, source: str, launch: Launch) -> None:
        self.view.reloaded(reload.UNCHANGED)
        last = self._answer(source, reload.UNCHANGED)
        self._save(config_error=None, reload_pending=None, last_reload=last, **launch.published())

    def reload_pending(self, source: str, why: str) -> None:
        self.view.reloaded(reload.APPLIED)
        last = self._answer(source, reload.PENDING)
        self._save(config_error=None, reload_pending=why, last_reload=last)

    def still_pending(self, why: str) -> None:
        self._save(reload_pending=why)

    def reload_applied(self, source: str) -> None:
        self.view.reloaded(reload.APPLIED)
        self._save(last_reload=self._answer(source, reload.APPLIED))

    def launch_changed(self, launch: Launch) -> None:
        """From now on JupyterLab starts as `launch` (a pending reload is no longer pending)."""
        last = self.record.last_reload
        if last is not None and last.result == reload.PENDING:
            last = last._replace(result=reload.APPLIED)
        self._save(config_error=None, reload_pending=None, last_reload=last, **launch.published())

    def reload_done(self, launch: Launch, ready_pid: int | None) -> None:
        """READY=1 now if JupyterLab answers (`ready_pid`), else once it does."""
        if ready_pid is not None:
            self._owes_ready = False
            self._announce(self._status_line(launch, ready_pid))
        else:
            self._owes_ready = True
            self._notifier.status(self._status_line(launch, None))

    def reload_restarting(self) -> None:
        """A reload restarts JupyterLab: READY=1 once the new one answers."""
        self._owes_ready = True

    # ── inside ──────────────────────────────────────────────────────────────

    def _answer(self, source: str, result: str) -> state.LastReload:
        """The answer to a reload, saved with the next record."""
        return state.LastReload(time.time(), source, result, self.record.sequence + 1)

    def _save(self, **changes: object) -> None:
        sequence = self.record.sequence + 1
        self.record = self.record.evolve(updated_at=time.time(), sequence=sequence, **changes)
        self.view.config_error = self.record.config_error is not None
        self._write()

    def _write(self) -> None:
        try:
            self._sink.write(self.record, self._secrets)
        except OSError as exc:
            return self._write_failed(exc)
        if self.write_problem is not None:
            logger.info("state_written_again", path=str(self._sink.path))
            self.write_problem = None
            self.view.state_write_failing = False
            self._sink.drop_spare()

    def _write_failed(self, exc: OSError) -> None:
        problem = (
            f"cannot write {self._sink.path}: {exc.strerror or exc}; free space there or make "
            "it writable: JupyterLab keeps running, and jlservice writes it as soon as it can"
        )
        if problem != self.write_problem:
            logger.error("state_write_failed", problem=problem)
        self.write_problem = problem
        self.view.state_write_failing = True
        self._sink.write_spare(self.record.evolve(state_error=problem))
        if not self._retrying:
            self._retrying = True
            self._later(RETRY_S, self._retry)

    def _retry(self) -> None:
        self._retrying = False
        if self.write_problem is not None:
            self._write()

    def _announce(self, status: str) -> None:
        self._announced = True
        self._notifier.ready(status)

    def _end_reload_badly(self, problem: str) -> None:
        if self._owes_ready:  # systemd waits for the end of the reload: it has ended, badly
            self._owes_ready = False
            self._announce(f"Reloaded, but JupyterLab failed to start: {problem}")

    def _status_line(self, launch: Launch, ready_pid: int | None) -> str:
        record = self.record
        if ready_pid is not None:
            line = f"JupyterLab ready on {launch.url} as {launch.account.name} (pid {ready_pid})"
        else:
            line = f"JupyterLab {record.status} on {launch.url}"
        if record.config_error:
            line += "; configuration rejected, still using the previous one: "
            line += record.config_error
        elif record.reload_pending:
            line += f"; reload pending: {record.reload_pending}"
        return line
