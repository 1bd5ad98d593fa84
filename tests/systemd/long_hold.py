"""A port held for long under the shipped system unit, watched while other tests run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from helpers.procs import wait_for
from helpers.squatter import Squatter, port_wait_steps

from jlservice.config import RestartConfig


class LongHold:
    """The port held by another user's program for long, with the default [restart] and the
    shipped unit. The hold outlasts the waits up to max_delay (31.5 s of them), WatchdogSec
    (jlservice must keep pinging while it waits) and the minute after which the unit used to
    be failed for good (jlservice exited after each wait, and StartLimitBurst restarts of it
    ended the unit). Beyond that nothing changes: each wait is max_delay, none counts as a
    failure, jlservice never exits, so the start limits never see a start; the unit's
    TimeoutStartSec ended with READY=1 at the first wait. The 10-minute hold is
    `python -m bench.port_hold --systemd`.
    begin() starts the unit (an early test), a thread watches it each second through the
    hold, lets the port go, waits for JupyterLab to serve and pulls the sandbox down (its
    JupyterLab runs as other_user), so that its minute passes while other tests run; a later
    test looks at what it saw (result())."""

    def __init__(
        self, installed, unit: str, watchdog_s: float, squatter_user, record: Path
    ) -> None:
        """`installed`: test_system_unit.Installed, in its sandbox; `unit`: its name, with
        WatchdogSec=`watchdog_s`; the port held by `squatter_user`'s program."""
        self.installed = installed
        self.unit = unit
        self.restart = RestartConfig()
        steps = port_wait_steps(self.restart)
        self.hold_s = max(sum(steps[:-1]) + 5, watchdog_s + 5, 60.0)
        account = squatter_user
        self.inside = ("nsenter", "-t", str(installed.box.pid1), "-m", "-p", "setpriv")
        self.inside += (f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups")
        self.account = account
        self.squatter = Squatter(record, "127.0.0.1", installed.port, b"jupyter-lab")
        self.first: dict[str, str] = {}
        self.seen: list[dict[str, str]] = []  # each second of the hold
        self.served = False  # JupyterLab answered the token once the port was free
        self.after: dict[str, str] = {}  # NRestarts and MainPID then
        self.freed_to_ready_s = 0.0
        self.error: BaseException | None = None
        self._began = 0.0  # time.monotonic() when the unit had started
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def begin(self) -> dict[str, str]:
        """The unit started while the port is held: its ActiveState and MainPID."""
        box = self.installed.box
        try:
            self.squatter.start(self.account, self.inside)
            self.squatter.wait_listening()
            box.systemctl("daemon-reload")
            box.systemctl("start", self.unit)  # Type=notify: returns at READY=1, the first wait
            self._began = time.monotonic()
            self.first = box.show(self.unit, "MainPID", "ActiveState")
        except BaseException:
            self.squatter.__exit__(None, None, None)
            box.close()  # the other sandboxes wait for it
            raise
        self._thread.start()
        return self.first

    @property
    def timeout(self) -> float:
        """Time enough for the hold, the last wait and a slow start."""
        return self.hold_s + self.restart.max_delay + 180

    def result(self) -> LongHold:
        """What it saw, once done; begun now if the early test was not run."""
        if not self.first:
            self.begin()
        self._thread.join(self.timeout)
        assert not self._thread.is_alive(), f"still watching after {self.timeout} s"
        if self.error is not None:
            raise self.error
        return self

    def _watch(self) -> None:
        box = self.installed.box
        try:
            try:
                while time.monotonic() - self._began < self.hold_s:
                    self.seen.append(
                        box.show(self.unit, "ActiveState", "MainPID", "NRestarts", "StatusText")
                    )
                    time.sleep(1)
            finally:
                self.squatter.__exit__(None, None, None)
            freed = time.monotonic()
            wait_for(
                lambda: self._status().startswith("JupyterLab ready"),
                self.restart.max_delay + 60,
                "JupyterLab to serve once the port is free",
            )
            self.freed_to_ready_s = time.monotonic() - freed
            self.served = self.installed.answers(self.installed.token())
            self.after = box.show(self.unit, "NRestarts", "MainPID")
        except BaseException as exc:  # raised in the later test, by result()
            self.error = exc
        finally:
            box.close()

    def _status(self) -> str:
        return self.installed.box.show(self.unit, "StatusText")["StatusText"]

    def end(self) -> None:
        """Once it is done (a run of the early test alone: wait for it), before its users
        are removed."""
        if self._thread.is_alive():
            self._thread.join(self.timeout)
        self.installed.box.close()
