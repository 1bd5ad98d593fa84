"""The memory controller, wherever this machine has it: cgroup v2 (the unified hierarchy,
what current distributions use) or v1 (its own `memory` hierarchy, beside a v2 one on a
hybrid layout). Paths inside a hierarchy are what /proc/PID/cgroup and the kernel log say."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from jlservice import procfs

UNLIMITED_V1 = 1 << 62  # v1 says "no limit" with PAGE_COUNTER_MAX pages in bytes (~2^63)


@dataclass(frozen=True)
class Cgroup:
    """A kernel's own memory cgroup, where it has one."""

    charge: int  # bytes charged to it now (memory.current / memory.usage_in_bytes)
    limit: int | None  # its memory limit; None: none
    oom_kills: int = 0  # processes the OOM killer ended in it, since it was made
    peak: int | None = None  # the most it was charged (None: this kernel does not say)


@dataclass(frozen=True)
class Memory:
    """Where the memory controller's hierarchy is mounted, and which version it is."""

    mount: Path
    version: int  # 1 or 2

    def dir(self, cgroup: str) -> Path:
        return self.mount / cgroup.lstrip("/")

    @property
    def limit_file(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    @property
    def charge_file(self) -> str:
        return "memory.current" if self.version == 2 else "memory.usage_in_bytes"

    def limit(self, cgroup: str) -> int | None:
        """The memory limit of `cgroup`; None: none (or unreadable)."""
        raw = _read(self.dir(cgroup) / self.limit_file)
        if raw is None or raw == "max" or not raw.isdigit():
            return None
        value = int(raw)
        return None if self.version == 1 and value >= UNLIMITED_V1 else value

    def charge(self, cgroup: str) -> int | None:
        raw = _read(self.dir(cgroup) / self.charge_file)
        return int(raw) if raw is not None and raw.isdigit() else None

    def oom_kills(self, cgroup: str) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (_read(self.dir(cgroup) / name) or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.isdigit():
                return int(value)
        return 0

    def peak(self, cgroup: str) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        raw = _read(self.dir(cgroup) / name)
        return int(raw) if raw is not None and raw.isdigit() else None

    def of(self, pid: int | str = "self") -> str | None:
        """`pid`'s cgroup in this hierarchy, from /proc/PID/cgroup."""
        raw = _read(Path(f"/proc/{pid}/cgroup"))
        for line in (raw or "").splitlines():
            _, controllers, path = line.split(":", 2)
            if (self.version == 2 and controllers == "") or (
                self.version == 1 and "memory" in controllers.split(",")
            ):
                return path
        return None


def memory(mountinfo: str = "/proc/self/mountinfo") -> Memory | None:
    """The memory controller's hierarchy: v1's `memory` mount if there is one (a hybrid
    layout puts the controller there), else the v2 mount whose root offers it."""
    v2 = None
    for mount, fstype, options in procfs.mounts(mountinfo):
        if fstype == "cgroup" and "memory" in options:
            return Memory(mount, 1)
        if fstype == "cgroup2" and v2 is None:
            controllers = _read(mount / "cgroup.controllers") or ""
            if "memory" in controllers.split():
                v2 = Memory(mount, 2)
    return v2


def unified(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the v2 hierarchy is mounted (/sys/fs/cgroup on v2, …/unified on a hybrid
    layout), if anywhere."""
    return next((m for m, fstype, _ in procfs.mounts(mountinfo) if fstype == "cgroup2"), None)


def _read(path: Path) -> str | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text().strip()
    return None
