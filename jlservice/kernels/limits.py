"""[kernels] memory_max: each kernel, and everything it starts, in a memory cgroup of its own
inside the cgroup systemd delegated to jlservice (Delegate=yes).

    <jlservice.service>/             what systemd made for the unit, delegated to jlservice
        supervisor/                  (cgroup v2 only) jlservice, JupyterLab, the warm parent
        kernels/kernel-<id>/         one kernel's tree, with its memory limit

The kernels stay inside the unit's cgroup: `systemctl stop` ends them with everything else,
and across JupyterLab's restarts they keep their cgroup. On cgroup v2 a cgroup that divides
its memory among children may hold no process itself, so jlservice first moves itself into
`supervisor/` (before it starts anything: JupyterLab and the warm parent inherit it). On v1
(a hybrid layout's `memory` hierarchy) there is no such rule and jlservice stays where
systemd put it. Outside systemd, without systemd's word that the cgroup is jlservice's
(Delegate=yes), or without the rights, limits are off and `why` says why; accounting goes on
from the process tree.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jlservice import log
from jlservice.kernels.cgroups import Cgroup, Memory, memory, unified

KERNEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
KERNELS = "kernels"
SUPERVISOR = "supervisor"
MAX_KERNEL_CGROUPS = 1024  # memory cgroup ids are few system-wide (65535 on v1)
FIX = "add a drop-in with `systemctl edit jlservice`: [Service] ProtectControlGroups=no"
# The mark systemd (>= 251) leaves on a delegated unit's cgroup of the v2 hierarchy, and only
# there: on systemd 252's hybrid layout the v1 hierarchies carry none. user.* since 252;
# trusted.* is readable only with CAP_SYS_ADMIN, which the shipped units withhold.
DELEGATE_XATTRS = ("user.delegate", "trusted.delegate")
SYSTEMCTL_TIMEOUT_S = 5.0

logger = log.get("jlservice.kernels")


@dataclass
class Limits:
    """The delegated cgroup and the limit new kernels get (None: accounting only)."""

    memory: Memory
    base: str  # the unit's cgroup, in the memory hierarchy
    memory_max: int | None
    # kernel id → the limit it keeps: a new one failed for it (v1: not below what it uses)
    kept: dict[str, int | None] = field(default_factory=dict)
    # The placer's thread and the loop (a reload) both write the kernels' cgroups.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def kernels(self) -> Path:
        return self.memory.dir(self.base) / KERNELS

    def describe(self) -> str:
        v = f"cgroup v{self.memory.version}"
        if self.memory_max is None:  # (raising a limit never fails: nothing is kept)
            return f"off: no [kernels] memory_max (each kernel still has a {v} cgroup of its own)"
        said = f"{self.memory_max} bytes per kernel"
        with self._lock:  # the placer's thread changes it
            kept = dict(self.kept)
        if kept:
            which = ", ".join(f"{k} {'no limit' if n is None else n}" for k, n in kept.items())
            said += f", but {len(kept)} kernel(s) kept their old limit ({which})"
        return f"on: {said} ({v}, {self.kernels})"

    def place(self, kernel_id: str, pid: int) -> None:
        """Move `pid` (a verified kernel) into kernel-<id>, made with the limit; OSError."""
        if not KERNEL_ID.fullmatch(kernel_id):
            raise ValueError(f"{kernel_id!r} is not a kernel id")
        path = self.kernels / f"kernel-{kernel_id}"
        if not path.exists() and len(self._kernel_dirs()) >= MAX_KERNEL_CGROUPS:
            raise ValueError(
                f"{MAX_KERNEL_CGROUPS} kernel cgroups already in {self.kernels}; "
                "shut down kernels not in use"
            )
        with self._lock:
            path.mkdir(exist_ok=True)
            self._limit(path)
            self.kept.pop(kernel_id, None)
            (path / "cgroup.procs").write_text(str(pid))

    def move(self, pid: int, cgroup: str) -> None:
        """`pid` back into `cgroup` (of the memory hierarchy); OSError."""
        (self.memory.dir(cgroup) / "cgroup.procs").write_text(str(pid))

    def apply(self, memory_max: int | None) -> None:
        """A new [kernels] memory_max, for the running kernels too; a kernel it cannot be
        set for (v1: EBUSY below what it uses) keeps its limit, logged and in describe().
        Called on the loop at a reload: a limit set below what a kernel uses makes Linux
        reclaim its memory (or OOM-kill in it) before the write returns, which a reload
        that lowers the limit accepts (it waits for the placer's thread's lock too)."""
        with self._lock:
            self.memory_max = memory_max
            for path in self._kernel_dirs():
                kernel_id = path.name.removeprefix("kernel-")
                try:
                    self._limit(path)
                except OSError as exc:
                    self.kept[kernel_id] = self.memory.limit(
                        str(path.relative_to(self.memory.mount))
                    )
                    logger.warning(
                        "kernel_limit_kept",
                        kernel_id=kernel_id,
                        limit_bytes=self.kept[kernel_id],
                        problem=f"cannot set {memory_max} bytes: {exc.strerror}; the kernel "
                        "keeps its limit until it restarts (cgroup v1 cannot go below its use)",
                    )
                else:
                    self.kept.pop(kernel_id, None)

    def cgroup(self, kernel_id: str) -> Cgroup | None:
        path = f"{self.base}/{KERNELS}/kernel-{kernel_id}"
        charge = self.memory.charge(path)
        if charge is None:
            return None
        m = self.memory
        return Cgroup(charge, m.limit(path), m.oom_kills(path), m.peak(path))

    def oom_kills(self, kernel_id: str) -> int | None:
        """The OOM-kill counter of kernel-<id> now; None: it has no cgroup."""
        path = f"{self.base}/{KERNELS}/kernel-{kernel_id}"
        return self.memory.oom_kills(path) if self.memory.dir(path).is_dir() else None

    def sweep(self, running: set[str]) -> None:
        """Remove the cgroups of kernels that are gone (a cgroup still in use stays)."""
        with self._lock:
            for path in self._kernel_dirs():
                kernel_id = path.name.removeprefix("kernel-")
                if kernel_id not in running:
                    with contextlib.suppress(OSError):
                        path.rmdir()
                        self.kept.pop(kernel_id, None)

    def _limit(self, path: Path) -> None:
        value = str(self.memory_max) if self.memory_max is not None else "max"
        if self.memory.version == 1 and self.memory_max is None:
            value = "-1"
        (path / self.memory.limit_file).write_text(value)

    def _kernel_dirs(self) -> list[Path]:
        with contextlib.suppress(OSError):
            return [p for p in self.kernels.iterdir() if p.name.startswith("kernel-")]
        return []


def set_up(
    memory_max: int | None, keeps_kernels: bool, environ: Mapping[str, str] = os.environ
) -> tuple[Limits | None, str]:
    """Before jlservice starts any child: the kernels' cgroups, or None and why not."""
    if not keeps_kernels:
        return None, "off: needs jlservice's kernel manager ([kernels] survive_restarts = true)"
    if "INVOCATION_ID" not in environ:
        return None, "off: jlservice does not run under systemd (no cgroup delegated to it)"
    found = memory()
    if found is None:
        return None, "off: this machine has no memory cgroup controller"
    base = found.of()
    if found.version == 2 and base is not None and base.endswith(f"/{SUPERVISOR}"):
        base = base.rpartition("/")[0]  # moved already (a restart of jlservice itself)
    if base is None or not base.endswith(".service"):
        return None, f"off: jlservice's cgroup {base} is not its unit's"
    if not delegated(base, unified()):
        unit = base.rpartition("/")[2]
        return None, (
            f"off: systemd has not delegated {unit}'s cgroup to jlservice (Delegate= is not "
            f"yes); add a drop-in with `systemctl edit {unit}`: [Service] Delegate=yes"
        )
    try:
        _prepare(found, base)
    except OSError as exc:
        why = exc.strerror or str(exc)
        return None, f"off: cannot divide {found.dir(base)} ({why}); {FIX}"
    limits = Limits(found, base, memory_max)
    return limits, limits.describe()


def delegated(base: str, v2: Path | None, says: Callable[[str], str | None] | None = None) -> bool:
    """Whether systemd delegated the unit's cgroup `base` to it: systemd's mark on it in the
    v2 hierarchy (mounted at `v2`), else the unit's Delegate= as systemd `says` it."""
    if v2 is not None:
        for name in DELEGATE_XATTRS:
            with contextlib.suppress(OSError):
                if os.getxattr(v2 / base.lstrip("/"), name) == b"1":
                    return True
    return (says or _systemd_says)(base.rpartition("/")[2]) == "yes"


def _systemd_says(unit: str) -> str | None:
    """`unit`'s Delegate= as systemd has it (systemd < 251, or no v2 hierarchy); None if
    systemctl does not answer."""
    if (systemctl := shutil.which("systemctl")) is None:
        return None
    argv = [systemctl, "show", "--property=Delegate", "--value", "--", unit]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _prepare(found: Memory, base: str) -> None:
    root = found.dir(base)
    (root / KERNELS).mkdir(exist_ok=True)
    if found.version == 1:
        return
    (root / SUPERVISOR).mkdir(exist_ok=True)
    for pid in (root / "cgroup.procs").read_text().split():  # jlservice (and its threads)
        (root / SUPERVISOR / "cgroup.procs").write_text(pid)
    for parent in (root, root / KERNELS):
        (parent / "cgroup.subtree_control").write_text("+memory")
