"""A hung JupyterLab (SIGSTOP: it keeps its port and answers nothing) under the default
[health]: jlservice replaces it. Each hang waits ~16 s for the default probes (interval 5 s,
then two failures of timeout 3 s), so one hang is looked at from every side at once: what the
supervisor records, the sd_notify contract (READY, STATUS, the watchdog pings and their pause,
STOPPING), the metrics, and a notebook's kernel, which outlives the hang. The hung JupyterLab
is the first start, cold either way, and noticing and ending it does not depend on how the next
one starts: the replacement is forked from the warm parent, the default ([restart] warm); a
cold replacement that keeps a kernel is test_kernels_tab.py's, a cold restart after a crash
test_core.py's. The same hang under systemd's shipped unit: tests/systemd."""

from __future__ import annotations

import datetime
import itertools
import os
import signal

import pytest
from helpers.metrics import metrics_section, metrics_url, open_notebook, value, wait_scrape
from helpers.procs import pid_alive, wait_for
from helpers.service import WARM_ONLY

pytestmark = WARM_ONLY

# A kernel's state that must outlive the hung JupyterLab: a variable and a child process.
STATE = "import subprocess\nx = 41\nchild = subprocess.Popen(['sleep', '600'])\nprint(child.pid)"


def _when(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


@pytest.mark.alone
def test_a_hang_is_replaced_and_seen_by_notify_metrics_and_the_kernel(
    service_factory, notify_socket
):
    # WATCHDOG_USEC of 1 s, not the shipped unit's WatchdogSec=30: pings every 0.5 s, so that
    # their pause during a hang (the first failed probe to the restart, ~8 s with the default
    # [health]) shows. The shipped 30 s: tests/systemd/test_system_unit.py.
    svc = service_factory(metrics=metrics_section(gpu=False))
    svc.start(wait=False, env={"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "1000000"})
    ready = notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=90)
    state = svc.state()
    assert state["status"] == "ready", "READY=1 only once JupyterLab answers"
    assert ready["STATUS"] == (
        f"JupyterLab ready on http://127.0.0.1:{svc.port}/ as {state['user']} "
        f"(pid {state['lab_pid']})"
    )
    svc.wait_ready()  # and, warm, the warm parent the restart is forked from

    # Pings every 0.5 s (half of WATCHDOG_USEC) while JupyterLab answers: the times they were
    # sent, however late they are read.
    seen = len(notify_socket.pings())
    notify_socket.read_until(lambda _: len(notify_socket.pings()) >= seen + 5, timeout=30)
    gaps = [b - a for a, b in itertools.pairwise(notify_socket.pings()[-5:])]
    assert all(0.45 <= gap < 1.0 for gap in gaps), f"watchdog pings not every 0.5 s: {gaps}"

    token = state["token"]
    kernel_id, kernel = open_notebook(svc, token, "kept.ipynb")
    child = int(svc.execute(token, kernel_id, STATE))
    url = metrics_url(svc)
    wait_scrape(url, lambda s: value(s, "jlservice_up") == 1, "jlservice_up 1")

    hung, offset = state["lab_pid"], svc.log_size()
    os.kill(hung, signal.SIGSTOP)
    wait_scrape(url, lambda s: value(s, "jlservice_up") == 0, "jlservice_up 0 while hung", 60)
    notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=60)
    state = svc.wait_ready(not_pid=hung)

    # The supervisor: replaced for being unhealthy, after failed probes.
    assert state["last_exit"]["reason"] == "unhealthy", state["last_exit"]
    assert state["started_warm"], "the replacement is forked from the warm parent"
    assert not pid_alive(hung), "the hung JupyterLab is ended"
    events = svc.log_events(offset)
    failed = _when(next(e for e in events if e["event"] == "lab_probe_failed"))
    acted = _when(next(e for e in events if e["event"] == "lab_unhealthy"))

    # sd_notify: no ping from the first failed probe until jlservice acts on it, one then,
    # and READY=1 (read above) once it has been replaced.
    pings = notify_socket.pings()
    assert acted - failed >= 3, "[health] interval 5 s and timeout 3 s: a pause to see"
    assert [t for t in pings if failed < t < acted] == [], "pings went on while it hung"
    assert [t for t in pings if t < failed], "pings before the hang"
    assert [t for t in pings if acted <= t < acted + 1], "jlservice said it acts"

    # The metrics: up again, the restart counted as unhealthy, not as a crash.
    s = wait_scrape(url, lambda s: value(s, "jlservice_up") == 1, "jlservice_up 1 again")
    assert value(s, "jlservice_restarts_total", reason="unhealthy") == 1
    assert value(s, "jlservice_restarts_total", reason="crash") == 0

    # The notebook's kernel went on through the hang, with its state, and was adopted.
    wait_for(
        lambda: [
            e
            for e in svc.log_events(offset)
            if e["event"] == "kernel_adopted" and e.get("kernel_id") == kernel_id
        ],
        60,
        f"kernel {kernel_id} to be adopted",
    )
    assert svc.execute(token, kernel_id, "print(x + 1, child.poll())").split() == ["42", "None"]
    assert pid_alive(kernel) and pid_alive(child), "the kernel and its child outlive the hang"

    svc.signal(signal.SIGTERM)
    stopping = notify_socket.read_until(lambda m: m.get("STOPPING") == "1", timeout=30)
    assert stopping["STATUS"]
    assert svc.wait_exit(timeout=30) == 0
