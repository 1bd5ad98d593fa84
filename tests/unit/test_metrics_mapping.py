"""GPU processes to kernels and notebooks: real processes, real /proc, real ancestry."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from jlservice.metrics import kernels
from jlservice.metrics.gpu import GpuSample
from jlservice.metrics.sampler import KernelMemory, attribute

KERNEL = "3f1c2a9e-6b1d-4c57-9d0e-8a1b2c3d4e5f"
CODE = "import subprocess, sys, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"


@pytest.fixture
def fake_kernel(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A process shaped like a kernel (kernel-<id>.json on its command line) and its child."""
    connection = tmp_path / f"kernel-{KERNEL}.json"
    proc = subprocess.Popen([sys.executable, "-c", CODE, "-f", str(connection)])
    try:
        parent = psutil.Process(proc.pid)
        for _ in range(200):
            if parent.children():
                break
            time.sleep(0.05)
        child = parent.children()[0].pid
        yield proc.pid, child
    finally:
        for p in psutil.Process(proc.pid).children():
            p.kill()
        proc.kill()
        proc.wait()


def test_kernel_and_its_child_belong_to_the_kernel(fake_kernel) -> None:
    kernel_pid, child_pid = fake_kernel
    assert kernels.owner(kernel_pid, {KERNEL}) == KERNEL
    assert kernels.owner(child_pid, {KERNEL}) == KERNEL


def test_kernel_of_another_server_is_nobodys(fake_kernel) -> None:
    kernel_pid, child_pid = fake_kernel
    assert kernels.owner(kernel_pid, {"another-kernel"}) is None
    assert kernels.owner(child_pid, set()) is None


def test_process_outside_jupyter_and_gone_process_are_nobodys() -> None:
    with subprocess.Popen(["sleep", "30"]) as proc:
        assert kernels.owner(proc.pid, {KERNEL}) is None
        proc.kill()
    assert kernels.owner(proc.pid, {KERNEL}) is None  # reaped: no such process


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
