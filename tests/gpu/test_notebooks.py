"""GPU memory per notebook: real kernels started through JupyterLab's REST API, their pids in
the fake NVML's process lists; and the Grafana dashboard against the exporter's real output."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import psutil
from helpers.metrics import (
    metrics_section,
    metrics_url,
    next_round,
    open_notebook,
    scrape_text,
    series,
    value,
    wait_scrape,
)
from nvml.fakenvml import FULL, GIB, Gpu

NOTEBOOK_A = 'dir with space/it\'s "quoted" ünïcødé \\ back.ipynb'
NOTEBOOK_B = "plain.ipynb"
DASHBOARD = Path(__file__).resolve().parents[2] / "etc" / "grafana" / "jlservice.json"


def test_gpu_memory_per_notebook(service_factory, fake_nvml) -> None:
    fake_nvml.write([Gpu("GPU-a", **FULL), Gpu("GPU-b", **FULL)])
    svc = service_factory(metrics=metrics_section())
    svc.start(env=fake_nvml.env())
    token = svc.state()["token"]
    id_a, pid_a = open_notebook(svc, token, NOTEBOOK_A)
    id_b, pid_b = open_notebook(svc, token, NOTEBOOK_B)
    # A process the notebook started (a data loader, a subprocess) counts for its notebook.
    child = int(
        svc.execute(token, id_a, "import subprocess; print(subprocess.Popen(['sleep', '600']).pid)")
    )
    outside = subprocess.Popen(["sleep", "600"])
    try:
        fake_nvml.write(
            [
                Gpu("GPU-a", **FULL, processes=[
                    (pid_a, 3 * GIB), (child, GIB), (pid_b, 2 * GIB), (outside.pid, GIB // 2),
                ]),
                Gpu("GPU-b", **FULL, processes=[(pid_b, 4 * GIB)]),
            ]
        )  # fmt: skip
        url = metrics_url(svc)
        s = wait_scrape(
            url,
            lambda s: (
                (value(s, "jlservice_gpu_other_memory_bytes", gpu="0", uuid="GPU-a") or 0) > 0
            ),
            "a round with the GPUs' new processes",
        )
        s = next_round(url, s)
        a = {"kernel_id": id_a, "notebook": NOTEBOOK_A}
        b = {"kernel_id": id_b, "notebook": NOTEBOOK_B}
        assert series(s, "jlservice_kernel_gpu_memory_bytes") == {
            frozenset({"gpu": "0", "uuid": "GPU-a", **a}.items()): 4 * GIB,
            frozenset({"gpu": "0", "uuid": "GPU-a", **b}.items()): 2 * GIB,
            frozenset({"gpu": "1", "uuid": "GPU-b", **b}.items()): 4 * GIB,
        }
        assert value(s, "jlservice_gpu_other_memory_bytes", gpu="0", uuid="GPU-a") == GIB // 2
        assert value(s, "jlservice_gpu_other_memory_bytes", gpu="1", uuid="GPU-b") == 0
        # The exposition escapes the label as the format says: \\ and \".
        escaped = NOTEBOOK_A.replace("\\", "\\\\").replace('"', '\\"')
        assert f'notebook="{escaped}"' in scrape_text(url)

        exported = {name for name, _ in s}
        queried = set()
        for panel in json.loads(DASHBOARD.read_text())["panels"]:
            for target in panel.get("targets", []):
                queried |= set(re.findall(r"\bjlservice_[a-z_]+\b", target["expr"]))
        assert len(queried) >= 15
        assert queried <= exported, queried - exported
    finally:
        outside.kill()
        outside.wait()


def _total(s, uuid: str) -> float:
    """GPU memory of the processes on GPU `uuid` in samples `s`, however it is split."""
    held = sum(v for k, v in series(s, "jlservice_kernel_gpu_memory_bytes").items()
               if ("uuid", uuid) in k)  # fmt: skip
    return held + (value(s, "jlservice_gpu_other_memory_bytes", gpu="0", uuid=uuid) or 0)


def test_without_notebook_labels_no_path_shows(service_factory, fake_nvml) -> None:
    fake_nvml.write([Gpu("GPU-a", **FULL)])
    svc = service_factory(metrics=metrics_section(notebook_labels=False))
    svc.start(env=fake_nvml.env())
    token = svc.state()["token"]
    kernel_id, pid = open_notebook(svc, token, "alice-thesis/chapter-3.ipynb")
    fake_nvml.write([Gpu("GPU-a", **FULL, processes=[(pid, 3 * GIB)])])
    url = metrics_url(svc)
    s = wait_scrape(
        url,
        lambda s: _total(s, "GPU-a") == 3 * GIB,
        "a round with the kernel's process",
    )
    s = next_round(url, s)
    assert series(s, "jlservice_kernel_gpu_memory_bytes") == {
        frozenset({"gpu": "0", "uuid": "GPU-a", "kernel_id": kernel_id}.items()): 3 * GIB
    }
    text = scrape_text(url)
    assert "alice-thesis" not in text and "chapter-3" not in text and "notebook=" not in text


def test_an_outsider_naming_a_kernel_file_is_not_that_notebook(
    service_factory, fake_nvml, other_user, second_user
) -> None:
    """Other local users (and the lab user's own jobs outside JupyterLab) can put a kernel's
    connection file on their command line: their GPU memory is not the notebook's."""
    svc = service_factory(metrics=metrics_section(), lab={"user": other_user.name})
    os.chown(svc.notebooks, other_user.uid, other_user.gid)
    fake_nvml.write([Gpu("GPU-a", **FULL)])
    svc.start(env=fake_nvml.env())
    token = svc.state()["token"]
    kernel_id, pid = open_notebook(svc, token, NOTEBOOK_B)
    connection = next(a for a in psutil.Process(pid).cmdline() if f"kernel-{kernel_id}" in a)
    assert connection.startswith(str(svc.root / "run" / "lab" / "runtime") + "/")
    pretend = ["/usr/bin/python3", "-c", "import time; time.sleep(600)", "-f", connection]
    outsiders = [
        subprocess.Popen(pretend, user=account.uid, group=account.gid, cwd="/")
        for account in (second_user, other_user)  # another user; the lab user, not from lab
    ]
    try:
        stranger, own_job = (p.pid for p in outsiders)
        fake_nvml.write(
            [
                Gpu("GPU-a", **FULL, processes=[
                    (pid, 2 * GIB), (stranger, GIB), (own_job, GIB // 2),
                ]),
            ]
        )  # fmt: skip

        def sampled(s) -> bool:  # the new process list, however it is split
            held = sum(series(s, "jlservice_kernel_gpu_memory_bytes").values())
            other = value(s, "jlservice_gpu_other_memory_bytes", gpu="0", uuid="GPU-a") or 0
            return held + other == 3.5 * GIB

        s = next_round(metrics_url(svc), wait_scrape(metrics_url(svc), sampled, "the new list"))
        notebook = {"gpu": "0", "uuid": "GPU-a", "kernel_id": kernel_id, "notebook": NOTEBOOK_B}
        assert series(s, "jlservice_kernel_gpu_memory_bytes") == {
            frozenset(notebook.items()): 2 * GIB
        }
        assert value(s, "jlservice_gpu_other_memory_bytes", gpu="0", uuid="GPU-a") == 1.5 * GIB
    finally:
        for outsider in outsiders:
            outsider.kill()
            outsider.wait()
