"""The state dir's filesystem fills up (a dataset download filling /var is the classic), is
remounted read-only (an ext4 error, `errors=remount-ro`), or the state dir is deleted: the next
crash of JupyterLab is restarted all the same, with the same token, `jlservice status`,
`jlservice token` and the metrics say what could not be written, and state.json is written again
once it can be."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.fs import fill, tmpfs
from helpers.metrics import metrics_section, metrics_url, value, wait_scrape
from helpers.procs import wait_for
from helpers.service import IS_ROOT, Service

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a small tmpfs")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small") as mount:
        yield mount


def published(svc: Service) -> dict:
    """What `jlservice status --json` says (the state dir's file, or the runtime dir's copy)."""
    result = svc.cli("status", "--json")
    return json.loads(result.stdout) if result.returncode == 0 else {}


def crash_and_wait(svc: Service, old: int) -> dict:
    """kill -9 JupyterLab (`old`); what status says once the next one is ready."""
    os.kill(old, signal.SIGKILL)
    return wait_for(
        lambda: (s := published(svc)).get("status") == "ready" and s.get("lab_pid") != old and s,
        90,
        "JupyterLab restarted while state.json cannot be written",
    )


@pytest.mark.alone
def test_a_full_state_disk_stops_nothing_and_heals_once_freed(service_factory, small_fs):
    svc = service_factory(service={"state_dir": str(small_fs / "state")})
    svc.state_dir = small_fs / "state"
    svc.start()
    token = svc.cli("token").stdout.strip()
    old = svc.lab_pid
    filler = fill(small_fs)

    now = crash_and_wait(svc, old)
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
    assert svc.state().get("state_error") is None and published(svc).get("state_error") is None


def test_a_read_only_state_disk_stops_nothing_and_heals_once_writable(service_factory, small_fs):
    svc = service_factory(service={"state_dir": str(small_fs / "state")}, metrics=metrics_section())
    svc.state_dir = small_fs / "state"
    svc.start()
    token = svc.cli("token").stdout.strip()
    old = svc.lab_pid
    subprocess.run(["mount", "-o", "remount,ro", small_fs], check=True)
    try:
        assert svc.api("GET", "api/status", token=token).status_code == 200  # still serving
        now = crash_and_wait(svc, old)
        assert svc.api("GET", "api/status", token=token).status_code == 200  # the same token
        assert svc.state()["lab_pid"] == old  # the last good state.json, not torn
        problem = now["state_error"]
        assert problem.startswith(f"cannot write {svc.state_dir / 'state.json'}: Read-only")
        assert "make it writable" in problem
        status = svc.cli("status")
        assert f"state file:  {problem}" in status.stdout
        printed = svc.cli("token")
        assert (printed.returncode, printed.stdout.strip()) == (0, token)
        assert problem in printed.stderr  # stdout stays the token alone, for $(jlservice token)
        url = metrics_url(svc)
        wait_scrape(url, lambda m: value(m, "jlservice_state_write_failing") == 1, "failing: 1")
        assert [e for e in svc.log_events() if e["event"] == "state_write_failed"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", small_fs], check=True)
    writable = time.monotonic()
    wait_for(lambda: svc.state().get("lab_pid") == now["lab_pid"], 30, "state.json written again")
    print(f"state.json current again {time.monotonic() - writable:.2f} s after remount,rw")
    assert published(svc).get("state_error") is None
    assert svc.cli("token").stderr == ""
    wait_scrape(url, lambda m: value(m, "jlservice_state_write_failing") == 0, "failing: 0")


def _removed(directory: Path) -> bool:
    try:
        shutil.rmtree(directory)
    except OSError:  # a file made in it while it was emptied
        return False
    return True


def test_a_deleted_state_dir_is_made_again_with_what_is_in_use(service_factory):
    svc = service_factory()
    svc.start()
    token = svc.cli("token").stdout.strip()
    old = svc.lab_pid
    secrets = {name: (svc.state_dir / name).read_bytes() for name in ("token", "cookie_secret")}
    # rm -rf, again while jlservice writes in it meanwhile (its warm parent, just ready).
    wait_for(lambda: _removed(svc.state_dir), 10, f"{svc.state_dir} removed")

    now = crash_and_wait(svc, old)
    assert svc.api("GET", "api/status", token=token).status_code == 200  # the same token
    assert now.get("state_error") is None  # made again at the first write
    assert svc.state()["lab_pid"] == now["lab_pid"]
    assert svc.state_dir.stat().st_mode & 0o777 == 0o700
    # The secrets in use are written back too: the next start of jlservice keeps them,
    # and logged-in browsers stay logged in.
    assert {name: (svc.state_dir / name).read_bytes() for name in secrets} == secrets
