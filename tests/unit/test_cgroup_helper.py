"""tests/helpers/cgroup.py: what a test leaves in its cgroup, or in cgroups below it (as the
kernels' own ones), is ended and removed, the deepest first."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers.cgroup import own_cgroup
from helpers.procs import pid_alive


def test_processes_and_cgroups_below_the_tests_cgroup_are_ended_and_removed() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a memory cgroup of the test's own")
    with own_cgroup() as made:
        deep = made.path / "kernels" / "kernel-x"
        deep.mkdir(parents=True)
        proc = subprocess.Popen(["sleep", "600"])
        (deep / "cgroup.procs").write_text(str(proc.pid))
    proc.wait(timeout=30)  # killed by the teardown (reaped here: the test is its parent)
    assert not pid_alive(proc.pid)
    assert not made.path.exists()
