"""The runtime dir's filesystem fills up (/run is a small tmpfs anything can fill). jlservice
holds a reserve there and frees it when the filesystem is full, so a crash-restart still
gets the room JupyterLab needs to start (it cannot be told not to write its own files
there): the service serves again at once, with the same token and the same kernels."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.fs import fill, tmpfs
from helpers.procs import wait_for
from helpers.service import IS_ROOT

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a small tmpfs")


@pytest.fixture
def small_run(tmp_path: Path) -> Iterator[Path]:
    """Asked for before service_factory, so unmounted after the service has stopped."""
    with tmpfs(tmp_path / "small-run", size="16m") as mount:
        yield mount


def test_a_full_runtime_disk_does_not_stop_crash_restarts(small_run, service_factory):
    svc = service_factory(service={"runtime_dir": str(small_run / "jlservice")})
    svc.start()
    reserve = small_run / "jlservice" / "lab" / "reserve"
    assert reserve.stat().st_size == 1 << 20
    token = svc.cli("token").stdout.strip()
    kernel_id, _ = svc.start_kernel(token)
    svc.execute(token, kernel_id, "x = 41")
    filler = fill(small_run)

    old, offset = svc.lab_pid, svc.log_size()
    os.kill(old, signal.SIGKILL)
    state = svc.wait_ready(not_pid=old, timeout=60)
    assert state["restarts"] == 1 and state["last_error"] is None, state
    events = svc.log_events(offset)
    exits = [e for e in events if e["event"] in ("lab_exited", "lab_start_failed")]
    assert len(exits) == 1, exits  # the kill -9 alone: no start failed
    (full,) = [e for e in events if e["event"] == "runtime_disk_full"]
    assert "free space on that filesystem" in full["effect"]
    assert not reserve.exists()
    # The same token, and the kernel with its variable, adopted by the new JupyterLab.
    assert svc.api("GET", "api/status", token=token).status_code == 200
    assert svc.execute(token, kernel_id, "print(x + 1)").strip() == "42"

    # Space again: the next start holds the reserve again.
    filler.unlink()
    old = svc.lab_pid
    os.kill(old, signal.SIGKILL)
    svc.wait_ready(not_pid=old, timeout=60)
    wait_for(reserve.exists, 10, "the reserve held again")
    assert svc.proc.poll() is None
