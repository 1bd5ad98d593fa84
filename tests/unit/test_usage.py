"""Each kernel's tree, across rounds: CPU that never goes back, restarts, idle time; and which
process is a kernel kept across a restart of JupyterLab (a child of jlservice)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlservice.labapi import Activity, Endpoint
from jlservice.metrics import proctree, usage
from jlservice.metrics.proctree import PAGE, TICK, Proc, Table

K = "3f1c2a9e-6b1d-4c57-9d0e-8a1b2c3d4e5f"


def _table(*procs: tuple[int, int, int, int]) -> Table:
    """(pid, ppid, cpu ticks, start ticks); 10 pages each."""
    return Table(Proc(pid, ppid, cpu, 10, start) for pid, ppid, cpu, start in procs)


def test_the_tree_counts_every_descendant_and_cpu_of_ended_processes_stays() -> None:
    acc = usage.Accounting()
    idle = {K: Activity("idle", 1000.0, 1)}
    first = _table((100, 1, 50, 7), (101, 100, 30, 8), (102, 101, 20, 9), (200, 1, 999, 3))
    (u,) = acc.round(first, {K: 100}, idle, {K: "a b/ü.ipynb"}, 1010.0)
    assert (u.processes, u.rss_bytes, u.cpu_seconds) == (3, 30 * PAGE, 100 / TICK)
    assert u.cpu_ratio is None  # no round before
    assert u.idle_seconds == 10.0 and u.notebook == "a b/ü.ipynb" and u.connections == 1
    # The grandchild ended (with what it used) and the kernel used 2 s of CPU in 2 s.
    second = _table((100, 1, 50 + 2 * TICK, 7), (101, 100, 30, 8))
    (u,) = acc.round(second, {K: 100}, {K: Activity("busy", 1011.0)}, {}, 1012.0)
    assert u.cpu_seconds == pytest.approx((100 + 2 * TICK) / TICK)
    assert u.cpu_ratio == pytest.approx(1.0)
    assert u.processes == 2 and u.idle_seconds is None and u.state == "busy"


def test_a_restarted_kernel_keeps_its_counter_and_counts_a_restart() -> None:
    acc = usage.Accounting()
    acc.round(_table((100, 1, 500, 7)), {K: 100}, {}, {}, 1.0)
    # A new process under the same id (and the old pid reused by another process later on).
    (u,) = acc.round(_table((300, 1, 5, 40)), {K: 300}, {}, {}, 2.0)
    assert u.restarts == 1 and u.cpu_seconds == pytest.approx(505 / TICK)
    (u,) = acc.round(_table((100, 1, 1, 90)), {K: 100}, {}, {}, 3.0)  # pid 100 again, new
    assert u.restarts == 2 and u.cpu_seconds == pytest.approx(506 / TICK)


def test_a_kernel_that_is_gone_is_forgotten() -> None:
    acc = usage.Accounting()
    acc.round(_table((100, 1, 500, 7)), {K: 100}, {}, {}, 1.0)
    assert acc.round(_table(), {}, {}, {}, 2.0) == ()
    (u,) = acc.round(_table((100, 1, 5, 7)), {K: 100}, {}, {}, 3.0)
    assert u.cpu_seconds == pytest.approx(5 / TICK) and u.restarts == 0


def test_stat_lines_with_spaces_and_parentheses_in_the_name() -> None:
    raw = b"42 (a) b (c)) S 7 42 42 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 555 1 9 18446744"
    proc = proctree.parse_stat(42, raw)
    assert proc == Proc(42, 7, 7, 9, 555)
    assert proctree.parse_stat(42, b"42 (x) S") is None


@pytest.fixture
def children(tmp_path: Path) -> Iterator:
    started: list[subprocess.Popen] = []

    def start(kernel_id: str) -> int:
        argv = [sys.executable, "-c", "import time; time.sleep(300)"]
        proc = subprocess.Popen([*argv, "-f", str(tmp_path / f"kernel-{kernel_id}.json")])
        started.append(proc)
        return proc.pid

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_kept_kernel_is_a_child_of_jlservice_and_an_impostor_loses(children, tmp_path) -> None:
    """After a restart of JupyterLab its kernels are jlservice's children (the subreaper):
    they still count; a later child of jlservice naming the same file is not the kernel."""
    kernel = children(K)
    impostor = children(K)
    lab = Endpoint("", "", pid=-5, uid=os.geteuid(), runtime_dir=str(tmp_path))
    table = proctree.scan()
    assert usage.kernel_roots(table, lab, {K}, me=os.getpid()) == {K: kernel}
    assert usage.kernel_roots(table, lab, {"other"}, me=os.getpid()) == {}
    assert impostor not in usage.owners(table, {K: kernel})
