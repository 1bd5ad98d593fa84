"""What each notebook uses, with real kernels started through JupyterLab: the metrics and
`jlservice status --json` against what /proc says of the kernel's tree."""

from __future__ import annotations

import json

import psutil
import pytest
from helpers.metrics import metrics_section, metrics_url, open_notebook, wait_scrape
from helpers.procs import wait_for

NOTEBOOK = 'dir with space/it\'s "quoted" ünïcødé \\ back.ipynb'
MIB = 2**20
# Three processes the notebook starts, each holding 50 MiB it has written (resident).
HOLDERS = (
    "import subprocess, sys\n"
    "code = 'import sys, time; b = b\"x\" * (50 << 20); print(1, flush=True); time.sleep(600)'\n"
    "procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE)"
    " for _ in range(3)]\n"
    "[p.stdout.readline() for p in procs]\n"
    "print(' '.join(str(p.pid) for p in procs))"
)


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _of(samples, name: str, kernel_id: str) -> float | None:
    for (metric, labels), value in samples.items():
        if metric == name and ("kernel_id", kernel_id) in labels:
            assert ("notebook", NOTEBOOK) in labels, labels
            return value
    return None


def test_a_kernel_and_its_children_as_proc_sees_them(service_factory) -> None:
    svc = service_factory(metrics=metrics_section())
    svc.start()
    token = svc.state()["token"]
    kernel_id, pid = open_notebook(svc, token, NOTEBOOK)
    children = [int(p) for p in svc.execute(token, kernel_id, HOLDERS).split()]
    tree = _tree(pid)
    assert set(children) <= {p.pid for p in tree}
    url = metrics_url(svc)
    s = wait_scrape(
        url,
        lambda s: _of(s, "jlservice_kernel_processes", kernel_id) == len(tree),
        "a round that counts the kernel's children",
    )
    proc_rss = sum(p.memory_info().rss for p in tree)
    rss = _of(s, "jlservice_kernel_resident_memory_bytes", kernel_id)
    assert rss >= 3 * 50 * MIB
    assert rss == pytest.approx(proc_rss, rel=0.05)
    cpu = _of(s, "jlservice_kernel_cpu_seconds_total", kernel_id)
    used = sum(sum(p.cpu_times()[:2]) for p in _tree(pid))
    assert 0 < cpu <= used + 0.05
    assert _of(s, "jlservice_kernel_busy", kernel_id) == 0
    assert _of(s, "jlservice_kernel_idle_seconds", kernel_id) >= 0
    assert _of(s, "jlservice_kernel_oom_kills_total", kernel_id) == 0

    def listed() -> dict | None:
        report = json.loads(svc.cli("status", "--json").stdout)
        rows = [r for r in report["notebooks"]["notebooks"] if r["kernel_id"] == kernel_id]
        return rows[0] if rows and rows[0]["processes"] == len(tree) else None

    row = wait_for(listed, 30, "the kernel in `jlservice status --json`")
    assert row["notebook"] == NOTEBOOK and row["pid"] == pid
    assert row["rss_bytes"] == pytest.approx(proc_rss, rel=0.05)
    assert row["state"] == "idle" and row["oom_kills"] == 0
