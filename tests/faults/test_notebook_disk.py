"""The notebook dir's filesystem fills up: JupyterLab keeps serving and reports its own
errors; jlservice exports the space left, logs once that it is low, and `jlservice doctor`
fails on it until space is freed. Or it stops answering: starts wait for it."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.fs import fill, hung, tmpfs
from helpers.metrics import metrics_url, value, wait_scrape
from helpers.procs import free_port, wait_for
from helpers.service import IS_ROOT, NotifySocket

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a small tmpfs")


def notebook_line(svc) -> tuple[int, str]:
    result = svc.cli("doctor")
    line = next(x for x in result.stdout.splitlines() if "notebook dir:" in x)
    return result.returncode, line


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    """Asked for before service_factory, so unmounted after the service has stopped."""
    with tmpfs(tmp_path / "notebooks-fs", size="64m") as mount:
        yield mount


def test_a_full_notebook_disk_is_exported_logged_and_failed_by_doctor(
    mount, service_factory, other_user
):
    notebooks = mount / "notebooks"
    notebooks.mkdir()
    os.chown(notebooks, other_user.uid, other_user.gid)
    # The default sample interval (5 s); only the port is the test's own.
    svc = service_factory(
        lab={"user": other_user.name, "allow_root": False, "notebook_dir": str(notebooks)},
        metrics={"listen": f"127.0.0.1:{free_port()}"},
    )
    svc.start()
    token = svc.cli("token").stdout.strip()
    url = metrics_url(svc)
    size = os.statvfs(notebooks).f_blocks * os.statvfs(notebooks).f_frsize

    def available(samples) -> float | None:
        return value(samples, "jlservice_notebook_dir_available_bytes")

    roomy = wait_scrape(url, lambda s: available(s) is not None, "the space metric")
    assert value(roomy, "jlservice_notebook_dir_size_bytes") == size
    assert available(roomy) > 0.9 * size
    assert notebook_line(svc) == (
        0,
        f"✓ notebook dir: {notebooks} exists and belongs to "
        f"{other_user.name}; {available(roomy) / 2**20:.0f} MiB "
        "free of 64 MiB (100.0%)",
    )

    filler = fill(mount)
    wait_scrape(url, lambda s: available(s) == 0, "the metric to say the disk is full")
    wait_for(lambda: "notebook_dir_space_low" in svc.log_text(), 10, "the low-space log")
    code, line = notebook_line(svc)
    assert code == 1 and line.startswith("✗ notebook dir: only 0 MiB free of 64 MiB")
    assert line.endswith("→ free space on that filesystem, or move notebook_dir")
    saved = svc.api(
        "PUT",
        "api/contents/new.txt",
        token=token,
        json={"type": "file", "format": "text", "content": "x" * 1_000_000},
    )
    assert saved.status_code >= 400  # JupyterLab's own error, and it goes on serving
    assert svc.api("GET", "api/status", token=token).status_code == 200

    filler.unlink()
    wait_scrape(url, lambda s: available(s) > 0.9 * size, "the metric to see the space")
    wait_for(lambda: "notebook_dir_space_ok" in svc.log_text(), 10, "the recovery log")
    assert notebook_line(svc)[0] == 0
    assert svc.log_text().count("notebook_dir_space_low") == 1


def _crash_and_wait(svc, lab: int) -> dict:
    """kill -9 of JupyterLab `lab`; the state once the next start waits for the notebook dir."""
    os.kill(lab, signal.SIGKILL)
    waiting = wait_for(
        lambda: "does not answer" in (svc.state().get("last_error") or "") and svc.state(),
        30,
        "the start to wait for the notebook dir",
    )
    assert waiting["status"] == "backoff"
    return waiting


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_a_notebook_dir_that_stops_answering_is_waited_for(service_factory, tmp_path):
    """A hard NFS mount whose server is gone: a crash-restart waits for it (never a failed
    start, never given up), the supervisor answers meanwhile, and once the filesystem is
    back JupyterLab serves again with the same token and kernel."""
    svc = service_factory()
    sock = NotifySocket(tmp_path / "notify.sock")
    svc.start(env={"NOTIFY_SOCKET": sock.path})
    token = svc.cli("token").stdout.strip()
    kernel_id, _ = svc.start_kernel(token)
    svc.execute(token, kernel_id, "x = 41")
    old, offset = svc.lab_pid, svc.log_size()
    with hung(svc.notebooks), contextlib.closing(sock):
        waiting = _crash_and_wait(svc, old)
        assert "a network filesystem whose server is gone?" in waiting["last_error"]
        # The loop goes on: a reload is answered (its check of the dir cannot be made now).
        before = waiting["sequence"]
        svc.signal(signal.SIGHUP)
        answered = wait_for(
            lambda: (
                (svc.state().get("last_reload") or {}).get("sequence", 0) > before and svc.state()
            ),
            15,
            "the reload's answer",
        )
        assert answered["last_reload"]["result"] == "unchanged", answered
        # Waits double as for a held port; none is a failed start.
        sock.read_until(
            lambda m: "Waiting for the notebook dir, trying again in 2 s" in m.get("STATUS", ""),
            timeout=30,
        )
    state = svc.wait_ready(not_pid=old, timeout=60)  # within the next wait (≤ 8 s)
    events = svc.log_events(offset)
    names = [e["event"] for e in events]
    assert names.count("notebook_dir_not_answering") == 1, names
    assert "notebook_dir_answers" in names
    assert "lab_start_failed" not in names and "supervisor_giving_up" not in names
    assert state["last_error"] is None
    assert svc.execute(token, kernel_id, "print(x + 1)").strip() == "42"


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_a_lab_users_own_mount_that_hangs_does_not_hang_the_supervisor(service_factory):
    """The lab user mounts a FUSE filesystem that never answers over the notebook dir (root
    may not look into it) and kills JupyterLab: the new one, entering the dir as that user,
    would hang before it ever runs; it is given up within 3 s and the start waits."""
    svc = service_factory()
    svc.start()
    old, offset = svc.lab_pid, svc.log_size()
    with hung(svc.notebooks, owner=(svc.account.uid, svc.account.gid)):
        _crash_and_wait(svc, old)
        reloaded = svc.cli("reload")  # answered: the loop never hung
        assert reloaded.returncode == 78 and "notebook_dir" in reloaded.stderr, reloaded
    svc.wait_ready(not_pid=old, timeout=60)
    names = [e["event"] for e in svc.log_events(offset)]
    assert "notebook_dir_not_answering" in names and "supervisor_giving_up" not in names


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse")
def test_jlservice_started_while_the_notebook_dir_hangs_waits_for_it(service_factory):
    svc = service_factory()
    with hung(svc.notebooks):
        svc.start(wait=False)
        wait_for(
            lambda: "does not answer" in (svc.state().get("last_error") or ""),
            30,
            "the first start to wait for the notebook dir",
        )
        assert svc.proc.poll() is None  # not exit 78: it waits
    svc.wait_ready(timeout=60)
