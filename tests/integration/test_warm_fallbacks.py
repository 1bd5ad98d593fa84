"""Whenever the warm parent cannot serve a start, JupyterLab starts cold, and says why: it does
not answer in time, it answers that the fork failed, or the command is no Python program it
could have imported."""

from __future__ import annotations

import os
import signal
import sys

from helpers.procs import pid_alive, wait_for
from helpers.service import Service

JUPYTER_LAB = os.path.join(os.path.dirname(sys.executable), "jupyter-lab")


def _events(svc: Service, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


def _warm(service_factory, **sections) -> Service:
    svc = service_factory(restart={"warm": True}, **sections)
    svc.wait_warm = True
    return svc.start()


def _crash(svc: Service) -> dict:
    old = svc.lab_pid
    os.kill(old, signal.SIGKILL)
    return svc.wait_ready(not_pid=old)


def test_a_warm_parent_that_does_not_answer_means_a_cold_start(service_factory):
    svc = _warm(service_factory)
    stuck = svc.state()["warm_parent"]["pid"]
    os.kill(stuck, signal.SIGSTOP)  # alive, holding its socket, answering nothing
    svc.wait_warm = False
    state = _crash(svc)
    assert state["started_warm"] is False
    (broken,) = _events(svc, "warm_parent_broken")
    assert (broken["pid"], broken["problem"]) == (stuck, "no answer within 5 s")
    assert _events(svc, "lab_start_cold")[-1]["reason"] == (
        "warm parent did not answer: no answer within 5 s"
    )
    wait_for(lambda: not pid_alive(stuck), 30, "the stuck warm parent to be ended")
    # A new one is made once JupyterLab is ready, and serves the next start.
    wait_for(lambda: (svc.state().get("warm_parent") or {}).get("ready"), 90, "a new warm parent")
    assert svc.state()["warm_parent"]["pid"] != stuck
    assert _crash(svc)["started_warm"] is True


def test_a_fork_that_fails_is_said_and_the_cold_start_says_why(service_factory):
    svc = _warm(service_factory)
    os.chown(svc.notebooks, 0, 0)
    svc.notebooks.chmod(0o700)  # the lab user can no longer enter its notebook dir
    old = svc.lab_pid
    os.kill(old, signal.SIGKILL)
    assert svc.wait_exit(timeout=90) == 78  # a configuration problem, said clearly
    cold = _events(svc, "lab_start_cold")
    assert cold and cold[0]["reason"] == (
        f"warm start failed: {svc.notebooks}: Permission denied"
    ), cold
    user = svc.account.name
    assert svc.state()["last_error"] == (
        f"user {user} cannot enter notebook_dir {svc.notebooks}: Permission denied; "
        f"give {user} access or fix [lab] notebook_dir"
    )


def test_a_shell_wrapper_command_starts_cold_every_time(service_factory):
    wrapper = ["/bin/sh", "-c", 'exec "$0" "$@"', JUPYTER_LAB]
    svc = service_factory(lab={"command": wrapper}, restart={"warm": True}).start()
    # Said once JupyterLab is ready; the log is written by a thread of its own.
    wait_for(lambda: _events(svc, "warm_parent_unavailable"), 10, "the warm parent's absence")
    (unavailable,) = _events(svc, "warm_parent_unavailable")
    assert unavailable["reason"] == "/bin/sh is not a Python script"
    assert svc.state()["warm_parent"] is None
    for _ in range(2):
        state = _crash(svc)
        assert state["started_warm"] is False
        assert _events(svc, "lab_start_cold")[-1]["reason"] == "/bin/sh is not a Python script"
    assert svc.api("GET", "api").status_code == 200
