"""The runtime dir's filesystem fills up (/run is a small tmpfs). jlservice writes nothing
there for a restart with the same secrets; JupyterLab itself cannot start without writing
its own files there (jupyter_server has no setting to skip them), so starts fail, say why,
and the service serves again, with the same token, once there is space."""

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
    with tmpfs(tmp_path / "small-run", size="4m") as mount:
        yield mount


def test_a_full_runtime_disk_fails_starts_that_say_why_until_freed(small_run, service_factory):
    svc = service_factory(service={"runtime_dir": str(small_run / "jlservice")})
    svc.start()
    token = svc.cli("token").stdout.strip()
    filler = fill(small_run)
    old = svc.lab_pid
    os.kill(old, signal.SIGKILL)
    failed = wait_for(
        lambda: "No space left on device" in (svc.state().get("last_error") or "") and svc.state(),
        60,
        "a start that says the disk is full",
    )
    assert failed["status"] == "backoff"
    # jlservice had nothing to write: its own preparation never failed.
    assert not [e for e in svc.log_events() if e["event"] == "lab_start_failed"]

    filler.unlink()
    state = svc.wait_ready(not_pid=old, timeout=60)  # within the next backoff (≤ 30 s)
    assert state["last_error"] is None
    assert svc.api("GET", "api/status", token=token).status_code == 200
    assert svc.proc.poll() is None
