"""How the supervisor applies its configuration file again: the reload half of its loop.

A reload parses and validates the whole file first. Invalid: nothing changes and the error
is shown (state, status, systemd STATUS=). Valid: settings JupyterLab never sees apply at
once; a different JupyterLab launch restarts it, at once or when the kernels are idle.
Every reload is framed by RELOADING=1 … READY=1 for systemd.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jlservice import launcher, listener, log, probe, reload, state
from jlservice.config import Config
from jlservice.events import PendingReloadDue, ReloadRequested

if TYPE_CHECKING:
    from jlservice.watch import ConfigWatcher

logger = log.get("jlservice.supervisor")


@dataclass
class PendingReload:
    """A restart-requiring reload waiting for idle kernels ([reload] when = "idle")."""

    launch: launcher.Launch
    deadline: float
    generation: int
    task: asyncio.Task[None] | None = None


class Reloading:
    """Mixed into Supervisor, whose state (config, launch, lab, notifier, _save…) it uses."""

    watcher: ConfigWatcher | None = None
    pending: PendingReload | None = None

    def _watch_config(self, loop: asyncio.AbstractEventLoop) -> None:
        wanted = self.config.path is not None and self.config.reload.watch
        if wanted and self.watcher is None:
            from jlservice.watch import ConfigWatcher

            self.watcher = ConfigWatcher(
                self.config.path, loop, self._config_changed, seen=self.config.digest
            )
            self.watcher.start()
        elif not wanted and self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def _config_changed(self, first_event: float) -> None:
        logger.info("config_change_detected", after_s=round(time.monotonic() - first_event, 3))
        self.post(ReloadRequested("file"))

    async def _on_reload(self, source: str) -> None:
        self.notifier.reloading()
        plan = reload.plan(self.config, self.launch)
        if self.watcher is not None and plan.config is not None:
            self.watcher.accept(plan.config.digest)
        now = time.time()
        self.figures.reloaded(plan.result)
        if plan.result == reload.REJECTED:
            self._save(
                config_error=plan.error, last_reload=state.LastReload(now, source, reload.REJECTED)
            )
            logger.error("config_rejected", source=source, problem=plan.error)
            self._reload_done()
            return
        self._apply_supervisor_settings(plan.config)
        if plan.result == reload.UNCHANGED:
            self._drop_pending()
            self.launch = plan.launch  # may differ in what JupyterLab never sees (public_url)
            self._save(
                config_error=None,
                reload_pending=None,
                last_reload=state.LastReload(now, source, reload.UNCHANGED),
                **plan.launch.published(),
            )
            logger.info("config_reloaded", source=source, result=plan.result)
            self._reload_done()
            return
        if self.config.reload.when == "idle" and self.lab and self.lab.ready:
            self._defer_until_idle(plan.launch, source)
            self._reload_done()
            return
        self._save(last_reload=state.LastReload(now, source, reload.APPLIED))
        logger.info("config_reloaded", source=source, result=plan.result)
        await self._restart_with(plan.launch)

    def _reload_done(self) -> None:
        """End systemd's reload: READY=1 now if JupyterLab answers, else once it does."""
        if self.lab is not None and self.lab.ready:
            self.notifier.ready(self._status_line())
        else:
            self.reloading = True
            self.notifier.status(self._status_line())

    def _apply_supervisor_settings(self, new: Config) -> None:
        """Settings JupyterLab never sees take effect at once."""
        if (new.log.level, new.log.format) != (self.config.log.level, self.config.log.format):
            log.configure(new.log.level, new.log.format)
        self.config = new
        self._watch_config(asyncio.get_running_loop())
        if self.exporter is not None:
            self.exporter.apply(new.metrics)
        if (self.lab is not None and self.lab.ready) or not new.restart.warm:
            self._keep_warm()  # [restart] warm turned on or off
        self._warn_risks()

    async def _restart_with(self, launch: launcher.Launch) -> None:
        self._use_launch(launch)
        self.reloading = True
        if self.lab is not None:
            await self._stop_lab("reload")  # its exit starts the new launch
        else:  # waiting in backoff: a new configuration deserves a fresh start now
            self.failures = 0
            await self._start()

    def _use_launch(self, launch: launcher.Launch) -> None:
        """From now on start `launch` (the one a pending reload waited to apply, if any)."""
        self._drop_pending()
        previous, self.launch = self.launch, launch
        if launch.account.uid != previous.account.uid:  # the old user holds the secrets
            self._new_secrets()
            self._log_user_changed(f"{previous.account.name} (uid {previous.account.uid})")
        if why := launcher.read_only_notebooks(launch):
            logger.warning("notebook_dir_read_only", problem=why)
        last = self.state.last_reload
        if last is not None and last.result == reload.PENDING:
            last = last._replace(result=reload.APPLIED)
        self._save(config_error=None, reload_pending=None, last_reload=last, **launch.published())

    def _defer_until_idle(self, launch: launcher.Launch, source: str) -> None:
        deadline = (
            self.pending.deadline
            if self.pending
            else time.monotonic() + self.config.reload.max_wait
        )
        generation = self.pending.generation + 1 if self.pending else 1
        self._drop_pending()
        self.pending = PendingReload(launch, deadline, generation)
        self.pending.task = asyncio.get_running_loop().create_task(self._wait_idle(self.pending))
        logger.info(
            "config_reload_pending", source=source, max_wait_s=round(deadline - time.monotonic(), 1)
        )
        self._save(
            config_error=None,
            reload_pending="waiting for busy kernels to finish",
            last_reload=state.LastReload(time.time(), source, reload.PENDING),
        )

    async def _wait_idle(self, pending: PendingReload) -> None:
        """Until no kernel is busy, or the deadline. Kernels whose state is unknown (no
        answer, or a malformed one: JupyterLab runs as the lab user) may be busy."""
        url = self.launch.api_url + "/kernels"
        told = unknown_logged = False
        while (left := pending.deadline - time.monotonic()) > 0:
            if (stranger := self._stranger_on_port()) is not None:
                # Who answers there would get the token: not idle as far as we know.
                if not told:
                    logger.warning("reload_idle_unknown", problem=stranger)
                    told = True
            else:
                busy = await probe.busy_kernels(url, self.token, timeout=min(5.0, left))
                if busy == 0:
                    break
                if busy is None and not unknown_logged:
                    logger.warning(
                        "reload_kernels_unknown",
                        problem=f"GET {url} gave no list of kernels",
                        effect=f"waiting at most {left:.0f} s more",
                    )
                    unknown_logged = True
                what = f"{busy} busy kernel(s)" if busy else "kernels whose state is unknown"
                self._save(
                    reload_pending=f"waiting for {what} to finish, at most {left:.0f} s more"
                )
            await asyncio.sleep(min(1.0, max(left, 0)))
        self.post(PendingReloadDue(pending.generation))

    def _stranger_on_port(self) -> str | None:
        """Who, instead of the running JupyterLab, would receive a request with the token."""
        if self.lab is None:
            return "JupyterLab is not running"
        launch = self.launch
        return listener.stranger(launch.ip, launch.port, self.lab.pid, launch.account.uid)

    def _drop_pending(self) -> None:
        if self.pending is not None:
            if self.pending.task is not None:
                self.pending.task.cancel()
            self.pending = None
