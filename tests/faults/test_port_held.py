"""The port held by another program (say a user's own `jupyter lab` on 8888) for long, with the
default [restart]: `jlservice run` waits through every backoff step up to max_delay and on, says
who holds the port, and serves within max_delay of the port being let go.

The hold lasts until the waits have reached max_delay (0.5 + 1 + 2 + 4 + 8 + 16 = 31.5 s of
them), not the 10 minutes of issue 14: from then on every wait is the same max_delay and nothing
counts them (a port wait is not a failed start), so a longer hold repeats the last step; the
10-minute hold itself is `python -m bench.port_hold`."""

from __future__ import annotations

import datetime
import time

from helpers.metrics import metrics_section, metrics_url, value, wait_scrape
from helpers.squatter import Squatter, port_wait_steps, waits_announced

from jlservice.config import RestartConfig

RESTART = RestartConfig()  # the defaults
STEPS = port_wait_steps(RESTART)  # 0.5, 1, 2, 4, 8, 16, 30 s


def _events(svc, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


def test_a_port_held_past_every_backoff_step_is_waited_for(
    service_factory, other_user, notify_socket, tmp_path
):
    assert STEPS == [0.5, 1, 2, 4, 8, 16, 30]
    svc = service_factory(metrics=metrics_section())
    svc.sections["restart"] = {}  # the default [restart] (the tests' timeouts are in it too)
    svc.write_config()
    record = tmp_path / "squatter.jsonl"
    with Squatter(record, "127.0.0.1", svc.port, b"jupyter-lab").start(other_user) as squatter:
        pid = squatter.wait_listening()
        svc.start(wait=False, env={"NOTIFY_SOCKET": notify_socket.path})
        notify_socket.read_until(
            lambda m: waits_announced([m.get("STATUS", "")]) == [RESTART.max_delay],
            timeout=sum(STEPS) + 30,
        )
        statuses = [m["STATUS"] for _, m in notify_socket.messages if "STATUS" in m]
        holder = f"port {svc.port} on 127.0.0.1 is in use by pid {pid} (jupyter-lab) of user "
        holder += other_user.name
        assert waits_announced(statuses) == STEPS
        assert all(holder in s for s in statuses if "trying again" in s), statuses
        # Up and waiting: READY=1 at the first wait, so a unit's start does not time out.
        assert [m for _, m in notify_socket.messages if m.get("READY") == "1"]
        assert svc.proc.poll() is None
        status = svc.cli("status")
        assert status.returncode == 0 and holder in status.stdout
        url = metrics_url(svc)
        wait_scrape(url, lambda m: value(m, "jlservice_port_in_use") == 1, "port in use: 1")
        assert len(_events(svc, "lab_port_in_use")) == 1  # once per holder, not per wait
    freed = time.time()  # the squatter is gone
    svc.wait_ready(timeout=RESTART.max_delay + 60)
    started = _events(svc, "lab_starting")[0]
    waited = datetime.datetime.fromisoformat(started["timestamp"]).timestamp() - freed
    assert waited <= RESTART.max_delay + 1, waited
    assert _events(svc, "lab_port_free")
    wait_scrape(url, lambda m: value(m, "jlservice_port_in_use") == 0, "port in use: 0")
