"""GPU memory per notebook: real kernels started through JupyterLab's REST API, their pids in
the fake NVML's process lists; and the Grafana dashboard against the exporter's real output."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from helpers.metrics import (
    kernel_pid,
    metrics_section,
    metrics_url,
    scrape_text,
    series,
    value,
    wait_scrape,
)
from nvml.fakenvml import FULL, GIB, Gpu

NOTEBOOK_A = 'dir with space/it\'s "quoted" ünïcødé \\ back.ipynb'
NOTEBOOK_B = "plain.ipynb"
DASHBOARD = Path(__file__).resolve().parents[2] / "etc" / "grafana" / "jlservice.json"
EMPTY_NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def open_notebook(svc, token: str, path: str) -> tuple[str, int]:
    """Open `path` as a notebook (POST api/sessions): its kernel's id and process."""
    file = svc.notebooks / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(EMPTY_NOTEBOOK))
    body = {"path": path, "name": file.name, "type": "notebook", "kernel": {"name": "python3"}}
    response = svc.api("POST", "api/sessions", token, json=body)
    response.raise_for_status()
    kernel_id = response.json()["kernel"]["id"]
    return kernel_id, kernel_pid(svc, kernel_id)


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
            lambda s: len(series(s, "jlservice_kernel_gpu_memory_bytes")) == 3,
            "GPU memory of both notebooks",
        )
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
