"""The sd_notify contract, checked on a fake NOTIFY_SOCKET the test listens on."""

from __future__ import annotations

import itertools
import os
import signal
import time

from helpers.service import WARM_AND_COLD

pytestmark = WARM_AND_COLD


def test_ready_status_watchdog_and_stopping(service, notify_socket):
    service.start(wait=False, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"})
    ready = notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=90)
    state = service.state()
    assert state["status"] == "ready"  # READY=1 only once JupyterLab answers
    user = state["user"]
    assert ready["STATUS"] == (
        f"JupyterLab ready on http://127.0.0.1:{service.port}/ as {user} (pid {state['lab_pid']})"
    )

    # Pings every 0.5 s (half of WATCHDOG_USEC) while JupyterLab answers...
    time.sleep(2.2)
    assert 3 <= _drain_pings(notify_socket) <= 6

    # ...none while it hangs, and again once it has been replaced (READY=1 once more).
    hung = state["lab_pid"]
    os.kill(hung, signal.SIGSTOP)
    notify_socket.messages.clear()
    notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=60)
    pings = [t for t, m in notify_socket.messages if m.get("WATCHDOG") == "1"]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 2 and max(gaps) > 2.0, f"pings went on while JupyterLab hung: {gaps}"
    service.wait_ready(not_pid=hung)

    service.signal(signal.SIGTERM)
    stopping = notify_socket.read_until(lambda m: m.get("STOPPING") == "1", timeout=30)
    assert stopping["STATUS"]
    assert service.wait_exit(timeout=30) == 0


def _drain_pings(sock) -> int:
    """Count the WATCHDOG=1 messages already queued on the socket."""
    count = 0
    sock.sock.settimeout(0.2)
    while True:
        try:
            data = sock.sock.recv(4096).decode()
        except TimeoutError:
            return count
        count += "WATCHDOG=1" in data
