"""The state dir's filesystem fills up (a dataset download filling /var is the classic): the
next crash of JupyterLab is restarted all the same, `jlservice status` says what could not be
written, and state.json is written again once there is space."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.fs import fill, tmpfs
from helpers.procs import wait_for
from helpers.service import IS_ROOT

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a small tmpfs")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small") as mount:
        yield mount


def test_a_full_state_disk_stops_nothing_and_heals_once_freed(service_factory, small_fs):
    svc = service_factory(service={"state_dir": str(small_fs / "state")})
    svc.state_dir = small_fs / "state"
    svc.start()
    token = svc.cli("token").stdout.strip()
    old = svc.lab_pid
    filler = fill(small_fs)

    os.kill(old, signal.SIGKILL)

    def published() -> dict:
        result = svc.cli("status", "--json")
        return json.loads(result.stdout) if result.returncode == 0 else {}

    now = wait_for(
        lambda: (s := published()).get("status") == "ready" and s.get("lab_pid") != old and s,
        90,
        "JupyterLab restarted while the state disk is full",
    )
    assert "No space left on device" in now["state_error"]
    assert svc.state()["lab_pid"] == old  # the last good state.json, not torn
    assert svc.api("GET", "api/status", token=token).status_code == 200  # the same token
    assert "state_write_failed" in svc.log_text()

    filler.unlink()
    freed = time.monotonic()
    wait_for(lambda: svc.state().get("lab_pid") == now["lab_pid"], 30, "state.json written again")
    healed_s = time.monotonic() - freed
    print(f"state.json current again {healed_s:.2f} s after the space was freed")
    assert healed_s < 10  # retried every 5 s
    assert svc.state().get("state_error") is None and published().get("state_error") is None
