"""Processes to kernels and notebooks: real processes, real /proc, real ancestry.

Here the test process plays JupyterLab: the processes it starts are its kernels."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from jlservice import labapi
from jlservice.labapi import Endpoint
from jlservice.metrics import proctree, usage
from jlservice.metrics.gpu import GpuSample
from jlservice.metrics.sampler import KernelMemory, attribute

KERNEL = "3f1c2a9e-6b1d-4c57-9d0e-8a1b2c3d4e5f"
OTHER = "0a1b2c3d-0000-4000-8000-000000000000"
SLEEP = "import time; time.sleep(300)"


def _lab(runtime: Path, **changes) -> Endpoint:
    """The test process as the JupyterLab whose kernels these are."""
    values = dict(api_url="", token="", pid=os.getpid(), uid=os.geteuid(), runtime_dir=str(runtime))
    return Endpoint(**{**values, **changes})


class _Kernels:
    """The sampler's mapping (usage.kernel_roots, then owners): which kernel's tree `pid` is
    in, this round."""

    @staticmethod
    def owner(pid: int, ids: set[str], lab: Endpoint, me: int = -1) -> str | None:
        table = proctree.scan()
        return usage.owners(table, usage.kernel_roots(table, lab, set(ids), me)).get(pid)


def _connection(runtime: Path, kernel_id: str) -> str:
    return str(runtime / f"kernel-{kernel_id}.json")


@pytest.fixture
def spawn() -> Iterator:
    """spawn(argv of the kernel, argv of its child) -> (kernel pid, child pid)."""
    started: list[subprocess.Popen] = []

    def start(kernel: list[str], child: list[str] | None = None, **kw) -> tuple[int, int | None]:
        code = f"import subprocess, time; subprocess.Popen({child!r}); time.sleep(300)"
        proc = subprocess.Popen([sys.executable, "-c", code if child else SLEEP, *kernel], **kw)
        started.append(proc)
        if child is None:
            return proc.pid, None
        parent = psutil.Process(proc.pid)
        for _ in range(200):
            if parent.children():
                return proc.pid, parent.children()[0].pid
            time.sleep(0.05)
        raise AssertionError("the kernel did not start its child")

    yield start
    for proc in started:
        for p in psutil.Process(proc.pid).children():
            p.kill()
        proc.kill()
        proc.wait()


def test_kernel_and_its_child_belong_to_the_kernel(spawn, tmp_path) -> None:
    kernel_pid, child_pid = spawn(["-f", _connection(tmp_path, KERNEL)], ["sleep", "300"])
    assert _Kernels.owner(kernel_pid, {KERNEL}, _lab(tmp_path)) == KERNEL
    assert _Kernels.owner(child_pid, {KERNEL}, _lab(tmp_path)) == KERNEL


def test_kernel_of_another_server_is_nobodys(spawn, tmp_path) -> None:
    kernel_pid, child_pid = spawn(["-f", _connection(tmp_path, KERNEL)], ["sleep", "300"])
    assert _Kernels.owner(kernel_pid, {"another-kernel"}, _lab(tmp_path)) is None
    assert _Kernels.owner(child_pid, set(), _lab(tmp_path)) is None


def test_process_outside_jupyter_and_gone_process_are_nobodys(tmp_path) -> None:
    with subprocess.Popen(["sleep", "30"]) as proc:
        assert _Kernels.owner(proc.pid, {KERNEL}, _lab(tmp_path)) is None
        proc.kill()
    assert _Kernels.owner(proc.pid, {KERNEL}, _lab(tmp_path)) is None  # reaped: no such process


def test_a_kernel_descends_from_jupyterlab(spawn, tmp_path) -> None:
    """A process that names the connection file but was not started by this JupyterLab (a
    job of the lab user's own, run from a shell) is no kernel."""
    elsewhere, _ = spawn([])
    kernel_pid, child_pid = spawn(["-f", _connection(tmp_path, KERNEL)], ["sleep", "300"])
    lab = _lab(tmp_path, pid=elsewhere)
    assert _Kernels.owner(kernel_pid, {KERNEL}, lab) is None
    assert _Kernels.owner(child_pid, {KERNEL}, lab) is None
    assert _Kernels.owner(os.getpid(), {KERNEL}, _lab(tmp_path)) is None  # JupyterLab itself


def test_a_kernel_runs_as_the_lab_user(spawn, tmp_path) -> None:
    kernel_pid, _ = spawn(["-f", _connection(tmp_path, KERNEL)])
    assert _Kernels.owner(kernel_pid, {KERNEL}, _lab(tmp_path, uid=os.geteuid() + 1)) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as nobody")
def test_a_process_of_another_user_is_no_kernel(spawn, tmp_path) -> None:
    kernel_pid, _ = spawn(["-f", _connection(tmp_path, KERNEL)], user=65534, group=65534)
    assert psutil.Process(kernel_pid).uids().real == 65534
    assert _Kernels.owner(kernel_pid, {KERNEL}, _lab(tmp_path)) is None


def test_the_kernel_nearest_jupyterlab_counts(spawn, tmp_path) -> None:
    """What a notebook starts cannot pass for another notebook's kernel."""
    child = [sys.executable, "-c", SLEEP, "-f", _connection(tmp_path, OTHER)]
    _, child_pid = spawn(["-f", _connection(tmp_path, KERNEL)], child)
    assert _Kernels.owner(child_pid, {KERNEL, OTHER}, _lab(tmp_path)) == KERNEL


@pytest.mark.parametrize(
    ("arg", "found"),
    [
        ("/run/lab/runtime/kernel-abc-1.json", "abc-1"),
        ("--f=/run/lab/runtime/kernel-abc-1.json", "abc-1"),
        ("--ConnectionFileMixin.connection_file=/run/lab/runtime/kernel-abc-1.json", "abc-1"),
        ("/run/lab/runtime/../runtime/kernel-abc-1.json", None),  # not the dir, as text
        ("/run/lab/runtime/sub/kernel-abc-1.json", None),
        ("/home/lab/link-to-runtime/kernel-abc-1.json", None),  # a symlink is not followed
        ("/tmp/kernel-abc-1.json", None),
        ("kernel-abc-1.json", None),
        ("/run/lab/runtime/kernel-abc-1.json.bak", None),
        ("/run/lab/runtime/xkernel-abc-1.json", None),
        ("-f", None),
    ],
)
def test_connection_file_is_in_the_runtime_dir(arg: str, found: str | None) -> None:
    assert labapi.connection_file_id(arg, "/run/lab/runtime") == found


def test_memory_is_summed_per_gpu_and_kernel() -> None:
    owners = {10: "k1", 11: "k1", 12: "k2", 13: None, 14: None}
    gpus = (
        GpuSample(0, "GPU-a", True, processes=((10, 100), (11, 20), (12, 5), (13, 7))),
        GpuSample(1, "GPU-b", True, processes=((11, 1), (14, 2))),
        GpuSample(2, "GPU-c", False),  # lost: nothing is attributed on it
    )
    held, other = attribute(gpus, {"k1": "a b/“x”.ipynb", "k2": ""}, owners.get)
    assert set(held) == {
        KernelMemory(0, "GPU-a", "k1", "a b/“x”.ipynb", 120),
        KernelMemory(0, "GPU-a", "k2", "", 5),
        KernelMemory(1, "GPU-b", "k1", "a b/“x”.ipynb", 1),
    }
    assert other == ((0, "GPU-a", 7), (1, "GPU-b", 2))
