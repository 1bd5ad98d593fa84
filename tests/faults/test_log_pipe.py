"""jlservice's stdout and stderr go to a pipe nobody reads (a stuck journald, a full pipe): the
supervisor still restarts a killed JupyterLab, answers SIGHUP and SIGTERM and pings the
watchdog; what cannot be written waits in a bounded queue, then is dropped and counted."""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Iterator

import pytest
from helpers import fs
from helpers.metrics import metrics_section, metrics_url, value, wait_scrape
from helpers.procs import wait_for
from helpers.service import Service

from jlservice import log
from jlservice.supervisor.lab_output import LINES_PER_S

FLOOD = log.MAX_QUEUED + 5_000  # lines: more than the queue holds


@pytest.fixture
def full_pipe() -> Iterator[int]:
    with fs.full_pipe() as write:
        yield write


@pytest.mark.alone
def test_an_unread_output_pipe_blocks_nothing(service_factory, full_pipe, notify_socket):
    svc: Service = service_factory(metrics=metrics_section())
    # 2 s: pings every second; the test sees any pause the blocked log would cause.
    env = {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "2000000"}
    svc.start(wait=False, env=env, output=full_pipe)
    notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=90)
    svc.wait_ready()
    token = svc.cli("token").stdout.strip()

    # JupyterLab prints more lines than the queue holds (written to its output pipe as
    # JupyterLab, or anything it runs, would), at the most jlservice logs of its output a
    # second: beyond that its lines are not even queued.
    with open(f"/proc/{svc.lab_pid}/fd/2", "wb") as lab_stderr:
        for start in range(0, FLOOD, LINES_PER_S):
            lines = range(start, min(start + LINES_PER_S, FLOOD))
            lab_stderr.write(b"".join(b"[W 2026 ServerApp] flood %d\n" % i for i in lines))
            lab_stderr.flush()
            time.sleep(1.05)  # the pace of a flood that is logged, not cut
    url = metrics_url(svc)
    dropped = wait_scrape(
        url, lambda m: (value(m, "jlservice_log_lines_dropped_total") or 0) > 0, "drops counted"
    )
    # Bounded: what did not fit was dropped, not kept.
    assert value(dropped, "jlservice_log_lines_dropped_total") <= FLOOD

    # A crash is still restarted (with the same token).
    old = svc.lab_pid
    os.kill(old, signal.SIGKILL)
    svc.wait_ready(not_pid=old)
    assert svc.api("GET", "api/status", token=token).status_code == 200

    # SIGHUP is still answered: RELOADING=1, then READY=1.
    svc.signal(signal.SIGHUP)
    notify_socket.read_until(lambda m: m.get("RELOADING") == "1", timeout=30)
    notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=30)
    assert svc.state()["last_reload"]["result"] == "unchanged"

    # The watchdog is fed all along (the log is blocked throughout): pings a second apart.
    since = time.time()
    notify_socket.read_until(lambda _: len(notify_socket.pings(since)) >= 4, timeout=30)
    pings = notify_socket.pings(since)
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1.8, pings

    # SIGTERM still stops it cleanly, within the stop timeout and the log's last flush.
    stopped = time.monotonic()
    svc.signal(signal.SIGTERM)
    notify_socket.read_until(lambda m: m.get("STOPPING") == "1", timeout=30)
    assert svc.wait_exit(timeout=30) == 0
    assert time.monotonic() - stopped < 15
    wait_for(lambda: svc.leftovers() == [], 10, "nothing left behind")
