"""The restart policy as a user gets it, with the default [restart]: crashes of a JupyterLab that
was ready are restarted at once (warm), however many a user causes. A command that never
starts backs off 0, 0.5, 1, 2, 4 s … (doubling to max_delay) and then gives up:
integration/test_core.py::test_always_crashing_command_backs_off_then_gives_up, with the
defaults too."""

from __future__ import annotations

import os
import signal
import statistics
import time

from helpers.service import Service


def _defaults(svc: Service) -> None:
    # The default [restart] (the tests' quicker stop and start timeouts are [restart] too).
    svc.sections["restart"] = {}
    svc.write_config()


def _events(svc: Service, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


def test_ten_kill9_one_second_apart_are_ten_warm_recoveries(service_factory):
    svc = service_factory()
    _defaults(svc)
    svc.wait_warm = True  # ready includes a warm parent ready to fork the next start
    svc.start()
    token = svc.cli("token").stdout.strip()
    recoveries = []
    for crash in range(10):
        old = svc.lab_pid
        killed = time.monotonic()
        os.kill(old, signal.SIGKILL)
        state = svc.wait_ready(not_pid=old)
        recoveries.append(time.monotonic() - killed)
        assert state["started_warm"] is True, f"crash {crash}: {state}"
        time.sleep(max(0.0, killed + 1.0 - time.monotonic()))  # one second apart
    assert svc.proc.poll() is None
    assert svc.state()["restarts"] == 10
    assert [e["delay_s"] for e in _events(svc, "lab_restart_scheduled")] == [0.0] * 10
    assert not _events(svc, "lab_crash_storm")
    assert svc.api("GET", "api/status", token=token).status_code == 200
    print(
        f"ten kill -9 one second apart: recovered in median {statistics.median(recoveries):.3f} s,"
        f" worst {max(recoveries):.3f} s, all warm"
    )
