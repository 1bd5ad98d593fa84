"""A memory cgroup of a test's own, on whichever version this machine's memory controller
is (v1 on a hybrid layout, v2 on a unified one); emptied (by the pids in it and in every
cgroup below it) and removed, the deepest first."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from jlservice.kernels import cgroups

from .procs import wait_for


class OwnCgroup:
    def __init__(self, memory: cgroups.Memory, name: str) -> None:
        self.memory = memory
        self.name = name  # its path inside the hierarchy
        self.path = memory.dir(name)

    def limit(self, size: int) -> None:
        (self.path / self.memory.limit_file).write_text(str(size))

    def usage(self) -> int:
        return int((self.path / self.memory.charge_file).read_text())

    def oom_kills(self) -> int:
        """OOM kills in it (v1: memory.oom_control, v2: memory.events)."""
        name = "memory.events" if self.memory.version == 2 else "memory.oom_control"
        fields = dict(line.split() for line in (self.path / name).read_text().splitlines())
        return int(fields["oom_kill"])

    def wrap(self) -> list[str]:
        """A command prefix that moves itself into the cgroup, then execs the rest."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path)]

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def below(self) -> list[Path]:
        """It and every cgroup below it, the deepest first."""
        return [Path(d) for d, _, _ in os.walk(self.path, topdown=False)]

    def all_pids(self) -> list[int]:
        pids = []
        for cgroup in self.below():
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile
                pids += [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        return pids


@contextlib.contextmanager
def own_cgroup() -> Iterator[OwnCgroup]:
    memory = cgroups.memory()
    assert memory is not None, "no memory cgroup controller on this machine"
    name = f"/jlservice-test-{os.getpid()}-{time.monotonic_ns()}"
    made = OwnCgroup(memory, name)
    made.path.mkdir()
    try:
        yield made
    finally:
        for pid in made.all_pids():  # what the test left in it, or below it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not made.all_pids(), 30, "an empty cgroup")
        for cgroup in made.below():
            cgroup.rmdir()
