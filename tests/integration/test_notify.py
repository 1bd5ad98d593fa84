"""The sd_notify contract, checked on a fake NOTIFY_SOCKET the test listens on."""

from __future__ import annotations

import datetime
import itertools
import os
import signal

from helpers.service import WARM_AND_COLD

pytestmark = WARM_AND_COLD


def _when(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


def _pings(sock) -> list[float]:
    """When each WATCHDOG=1 read so far was sent."""
    return [t for t, m in sock.messages if m.get("WATCHDOG") == "1"]


def test_ready_status_watchdog_and_stopping(service, notify_socket):
    # WATCHDOG_USEC of 1 s, not the shipped unit's WatchdogSec=30: pings every 0.5 s, so that
    # their pause during a hang (the first failed probe to the restart, ~8 s with the default
    # [health]) shows. The shipped 30 s: tests/systemd/test_system_unit.py.
    service.start(wait=False, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"})
    ready = notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=90)
    state = service.state()
    assert state["status"] == "ready"  # READY=1 only once JupyterLab answers
    user = state["user"]
    assert ready["STATUS"] == (
        f"JupyterLab ready on http://127.0.0.1:{service.port}/ as {user} (pid {state['lab_pid']})"
    )

    # Pings every 0.5 s (half of WATCHDOG_USEC) while JupyterLab answers: the times they were
    # sent, however late they are read.
    seen = len(_pings(notify_socket))
    notify_socket.read_until(lambda _: len(_pings(notify_socket)) >= seen + 5, timeout=30)
    gaps = [b - a for a, b in itertools.pairwise(_pings(notify_socket)[-5:])]
    assert all(0.45 <= gap < 1.0 for gap in gaps), gaps

    # None from the first failed probe of the hung server until jlservice acts on it, and
    # one then; READY=1 once it has been replaced.
    hung = state["lab_pid"]
    os.kill(hung, signal.SIGSTOP)
    notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=60)
    events = service.log_events()
    failed = _when(next(e for e in events if e["event"] == "lab_probe_failed"))
    acted = _when(next(e for e in events if e["event"] == "lab_unhealthy"))
    pings = _pings(notify_socket)
    assert acted - failed >= 3  # [health] interval 5 s and timeout 3 s: a pause to see
    assert [t for t in pings if failed < t < acted] == [], "pings went on while it hung"
    assert [t for t in pings if t < failed], "pings before the hang"
    assert [t for t in pings if acted <= t < acted + 1], "jlservice said it acts"
    service.wait_ready(not_pid=hung)

    service.signal(signal.SIGTERM)
    stopping = notify_socket.read_until(lambda m: m.get("STOPPING") == "1", timeout=30)
    assert stopping["STATUS"]
    assert service.wait_exit(timeout=30) == 0
