"""The restart policy as a user gets it, with the default [restart]: crashes of a JupyterLab that
was ready are restarted at once (warm), however many a user causes; a command that never
starts backs off 0, 0.5, 1, 2, 4 s … (doubling to max_delay) and then gives up."""

from __future__ import annotations

import datetime
import os
import signal
import statistics
import time

from helpers.procs import wait_for
from helpers.service import Service

from jlservice.config import RestartConfig
from jlservice.supervisor import policy


def _defaults(svc: Service) -> None:
    # The default [restart] (the tests' quicker stop and start timeouts are [restart] too).
    svc.sections["restart"] = {}
    svc.write_config()


def _events(svc: Service, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


def _when(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


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


def test_a_command_that_never_starts_backs_off_doubling(service_factory):
    """The first six starts (0, 0.5, 1, 2, 4 s apart) of the ten the defaults allow: the rest
    (8, 16, 30, 30 s, then exit 1) would add 84 s of waiting to the suite; the whole sequence
    and the exit are tests/unit/supervisor/test_lifecycle.py's, with the defaults, and the
    exit with the real process integration/test_core.py's, with short delays."""
    svc = service_factory()
    script = svc.root / "crash.sh"
    script.write_text("#!/bin/sh\necho 'no GPU driver found, giving up' >&2\nexit 3\n")
    script.chmod(0o755)
    svc.sections["lab"]["command"] = [str(script)]
    _defaults(svc)
    svc.start(wait=False)
    restart = RestartConfig()
    expected = [policy.backoff_delay(n, restart) for n in range(1, 6)]
    assert expected == [0.0, 0.5, 1.0, 2.0, 4.0]

    wait_for(lambda: len(_events(svc, "lab_starting")) >= 6, 60, "six starts")
    scheduled = _events(svc, "lab_restart_scheduled")[:5]
    assert [e["delay_s"] for e in scheduled] == expected
    assert [e["failures"] for e in scheduled] == [1, 2, 3, 4, 5]
    starts = [_when(e) for e in _events(svc, "lab_starting")[1:6]]
    for delay, event, started in zip(expected, scheduled, starts, strict=True):
        waited = started - _when(event)
        assert delay <= waited < delay + 1.0, (delay, waited)
    state = svc.state()
    assert state["status"] in ("backoff", "starting")
    assert "no GPU driver found" in state["last_error"]
    assert svc.proc.poll() is None  # ten failed starts in a row end it, not six
    svc.signal(signal.SIGTERM)
    assert svc.wait_exit(timeout=30) == 0
