"""A leftover that SIGKILL cannot end: a terminal's shell of a killed JupyterLab (its
kernels are kept for the next JupyterLab; a terminal is not), frozen by the cgroup v1
freezer (as a frozen container or a process stuck in the kernel would be). jlservice waits
for it a bounded time, then starts the new JupyterLab all the same and says what it left
behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers.metrics import metrics_section, metrics_url, value, wait_scrape
from helpers.procs import pid_alive, wait_for
from helpers.service import IS_ROOT, event_time

from jlservice.config import RestartConfig
from jlservice.supervisor import children

FREEZER = Path("/sys/fs/cgroup/freezer")

pytestmark = [
    pytest.mark.skipif(not IS_ROOT, reason="needs root to make a freezer cgroup"),
    pytest.mark.skipif(
        not (FREEZER / "cgroup.procs").exists(),
        reason="no cgroup v1 freezer at /sys/fs/cgroup/freezer on this machine",
    ),
]


class Freezer:
    """A freezer cgroup of the test's own, made by path and removed after thawing."""

    def __init__(self) -> None:
        self.path = FREEZER / f"jlservice-test-{uuid.uuid4().hex[:12]}"
        self.path.mkdir()
        self.pids: list[int] = []

    def freeze(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))
        assert str(pid) in self.procs(), f"pid {pid} was not moved into the freezer (exiting?)"
        self.pids.append(pid)
        (self.path / "freezer.state").write_text("FROZEN")
        wait_for(lambda: self.state() == "FROZEN", 10, "the cgroup to freeze")

    def thaw(self) -> None:
        (self.path / "freezer.state").write_text("THAWED")
        wait_for(lambda: self.state() == "THAWED", 10, "the cgroup to thaw")

    def procs(self) -> list[str]:
        return (self.path / "cgroup.procs").read_text().split()

    def state(self) -> str:
        return (self.path / "freezer.state").read_text().strip()

    def remove(self) -> None:
        self.thaw()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.procs(), 30, "empty cgroup")
        self.path.rmdir()


@pytest.fixture(scope="session")
def frozen_leftover(early_service_factory) -> Iterator[tuple]:
    """A JupyterLab killed with its terminal's shell frozen (so SIGKILL cannot end it), by an
    early test: the sweep's wait for it (stop_timeout, 20 s, and then some) passes while the
    other tests run. The service, the freezer, the shell's pid, the killed JupyterLab's, when
    it was killed (time.time()) and the token."""
    freezer = Freezer()
    try:
        svc = early_service_factory("frozen", metrics=metrics_section())
        svc.start()
        token = svc.cli("token").stdout.strip()
        old = svc.lab_pid
        shell = int(svc.open_terminal(token)[1])
        assert psutil.Process(shell).ppid() == old
        freezer.freeze(shell)
        killed = time.time()
        os.kill(old, signal.SIGKILL)
        yield svc, freezer, shell, old, killed, token
    finally:
        freezer.remove()


@pytest.mark.early
def test_a_frozen_leftover_is_sent_sigterm_and_waited_for(frozen_leftover):
    svc, _, shell, _, _, _ = frozen_leftover
    wait_for(
        lambda: [e for e in svc.log_events() if e.get("event") == "leftover_process"],
        60,
        "the sweep of what the killed JupyterLab left",
    )
    assert pid_alive(shell), "frozen: nothing ends it"


def test_a_frozen_leftover_is_left_behind_and_jupyterlab_restarts(frozen_leftover):
    """(Killed by the early test above.)"""
    svc, freezer, shell, old, killed, token = frozen_leftover
    svc.wait_ready(not_pid=old)
    # When it was ready, from its log (this test may run long after that; the line may
    # follow state.json by a moment: the log is written by a thread of its own).
    readies = wait_for(
        lambda: [e for e in svc.log_events() if e["event"] == "lab_ready" and e["pid"] != old],
        30,
        "the new JupyterLab's lab_ready line",
    )
    (ready,) = readies
    took = event_time(ready) - killed
    # The sweep's SIGTERM grace, then KILL_WAIT_S after SIGKILL, then a (warm) start.
    bound = RestartConfig().stop_timeout + children.KILL_WAIT_S + 30
    assert took < bound, took
    assert pid_alive(shell)  # frozen: SIGKILL is pending, and it has not died
    assert svc.api("GET", "api/status", token=token).status_code == 200
    assert svc.state()["stuck_pids"] == [shell]
    assert f"stuck:       pid {shell}: SIGKILL did not end them" in svc.cli("status").stdout
    wait_scrape(metrics_url(svc), lambda m: value(m, "jlservice_stuck_processes") == 1, "stuck 1")
    stuck = [e for e in svc.log_events() if e["event"] == "leftover_unkillable"]
    assert [e["pids"] for e in stuck] == [[shell]]
    # Thawed at last, the pending SIGKILL ends it, and jlservice reaps it.
    freezer.thaw()
    wait_for(lambda: not pid_alive(shell), 30, "the thawed shell to die")
    wait_for(
        lambda: [e for e in svc.log_events() if e["event"] == "stuck_process_ended"],
        30,
        "jlservice to reap it",
    )
    # … and says so at once: nothing is stuck any more.
    wait_for(lambda: svc.state().get("stuck_pids") == [], 10, "state.json: nothing stuck")
    assert "stuck:" not in svc.cli("status").stdout
    wait_scrape(metrics_url(svc), lambda m: value(m, "jlservice_stuck_processes") == 0, "stuck 0")
    svc.cleanup()  # not needed for the rest of the run
