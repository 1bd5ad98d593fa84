"""The notebook dir's filesystem fills up: JupyterLab keeps serving and reports its own
errors; jlservice exports the space left, logs once that it is low, and `jlservice doctor`
fails on it until space is freed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.fs import fill, tmpfs
from helpers.metrics import metrics_url, value, wait_scrape
from helpers.procs import free_port, wait_for
from helpers.service import IS_ROOT

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
