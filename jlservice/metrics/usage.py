"""What each notebook uses: its kernel and everything the kernel started, from one /proc pass.

A kernel is a direct child of the JupyterLab jlservice runs (or, once kept across a restart
of JupyterLab, of jlservice itself) that runs as the lab user and names its connection file
`<JUPYTER_RUNTIME_DIR>/kernel-<id>.json` on its command line; what it starts, and what they
start, is its tree. A process that leaves the tree (a daemon that double-forks) is re-parented
to jlservice and no longer counts; a kernel's own cgroup (kernels.limits) counts it still.

CPU seconds are a counter that never goes back: what a process of the tree used before it
ended is kept. Runs in the sampler thread.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from jlservice.kernels.cgroups import Cgroup
from jlservice.labapi import Activity, Endpoint, connection_file_id
from jlservice.metrics.proctree import PAGE, TICK, Proc, Table

MAX_TREE = 10_000  # processes counted for one kernel (a fork bomb must not hold the sampler)


@dataclass(frozen=True)
class Usage:
    kernel_id: str
    notebook: str  # "" for a kernel of no session
    pid: int
    state: str  # execution state, as JupyterLab says it
    idle_seconds: float | None  # since its last activity; None while busy or starting
    connections: int
    cpu_seconds: float
    cpu_ratio: float | None  # cores used over the last round (1.0: one core); None: first
    rss_bytes: int  # the tree's resident memory (pages shared by two processes count twice)
    processes: int
    restarts: int  # seen by the sampler: a new process under the same kernel id
    cgroup: Cgroup | None = None
    last_activity: float | None = None  # Unix time, as JupyterLab said it, while idle


@dataclass
class _Seen:
    root: tuple[int, int]  # (pid, start ticks) of the kernel's process
    cpu: dict[tuple[int, int], int] = field(default_factory=dict)  # of each process, in ticks
    retired: int = 0  # ticks of processes of the tree that have ended
    total: int = 0
    at: float = 0.0
    restarts: int = 0


def kernel_roots(table: Table, lab: Endpoint, ids: set[str], me: int) -> dict[str, int]:
    """kernel id → its process: JupyterLab's child; else the oldest of jlservice's (`me`)."""
    found: dict[str, Proc] = {}
    for parent in (lab.pid, me):
        for pid in table.children.get(parent, ()):
            kernel_id = _names_kernel(pid, lab, ids)
            if kernel_id is not None:
                new, old = table.procs[pid], found.get(kernel_id)
                if old is None or _rank(new, lab.pid) < _rank(old, lab.pid):
                    found[kernel_id] = new
    return {kernel_id: proc.pid for kernel_id, proc in found.items()}


def _rank(proc: Proc, lab_pid: int) -> tuple[bool, int]:
    """JupyterLab's own child first, then the older: what a kernel's process started later
    cannot pass for it by naming its connection file."""
    return proc.ppid != lab_pid, proc.start_ticks


def kernel_in(chain: list[int], lab: Endpoint, me: int) -> str | None:
    """The kernel in `chain` (a process and its ancestors, nearest first): the process whose
    parent is JupyterLab or jlservice (`me`) and that is a kernel, whatever its id."""
    for pid, parent in itertools.pairwise(chain):
        if parent in (lab.pid, me):
            return _names_kernel(pid, lab, None)
    return None


def _names_kernel(pid: int, lab: Endpoint, ids: set[str] | None) -> str | None:
    """The kernel id (of `ids`, or any) whose connection file `pid` names, if it runs as the
    lab user."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            uids = next(line for line in f if line.startswith(b"Uid:")).split()[1:3]
        if any(int(uid) != lab.uid for uid in uids):
            return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(1 << 20).split(b"\0")
    except (OSError, StopIteration, ValueError):
        return None
    for arg in argv:
        kernel_id = connection_file_id(os.fsdecode(arg), lab.runtime_dir)
        if kernel_id is not None and (ids is None or kernel_id in ids):
            return kernel_id
    return None


def owners(table: Table, roots: dict[str, int]) -> dict[int, str]:
    """pid → the kernel whose tree it is in."""
    found: dict[int, str] = {}
    for kernel_id, root in roots.items():
        for proc in table.tree(root, MAX_TREE):
            found.setdefault(proc.pid, kernel_id)
    return found


class Accounting:
    """Per kernel, across rounds: CPU kept from ended processes, restarts, CPU per round."""

    def __init__(self) -> None:
        self._seen: dict[str, _Seen] = {}

    def round(
        self,
        table: Table,
        roots: dict[str, int],
        activity: dict[str, Activity],
        notebooks: dict[str, str],
        now: float,
        cgroup: Callable[[str], Cgroup | None] = lambda _id: None,
    ) -> tuple[Usage, ...]:
        """Each kernel's usage now (`now`: time.time()); kernels not in `roots` are dropped."""
        usage = []
        for kernel_id, root in sorted(roots.items()):
            procs = list(table.tree(root, MAX_TREE))
            if not procs:
                continue
            seen = self._account(kernel_id, procs, now)
            info = activity.get(kernel_id, Activity())
            idle = now - info.last_activity if info.state == "idle" and info.last_activity else None
            usage.append(
                Usage(
                    kernel_id=kernel_id,
                    notebook=notebooks.get(kernel_id, ""),
                    pid=root,
                    state=info.state,
                    idle_seconds=max(idle, 0.0) if idle is not None else None,
                    last_activity=info.last_activity if idle is not None else None,
                    connections=info.connections,
                    cpu_seconds=seen[0].total / TICK,
                    cpu_ratio=seen[1],
                    rss_bytes=sum(p.rss_pages for p in procs) * PAGE,
                    processes=len(procs),
                    restarts=seen[0].restarts,
                    cgroup=cgroup(kernel_id),
                )
            )
        for gone in self._seen.keys() - roots.keys():
            del self._seen[gone]
        return tuple(usage)

    def _account(self, kernel_id: str, procs: list[Proc], now: float) -> tuple[_Seen, float | None]:
        root = (procs[0].pid, procs[0].start_ticks)
        seen = self._seen.get(kernel_id)
        if seen is None:
            seen = self._seen[kernel_id] = _Seen(root)
        elif seen.root != root:  # restarted under the same id: its CPU so far stays counted
            seen.retired = seen.total
            seen.cpu = {}
            seen.root = root
            seen.restarts += 1
        now_cpu = {(p.pid, p.start_ticks): p.cpu_ticks for p in procs}
        seen.retired += sum(t for key, t in seen.cpu.items() if key not in now_cpu)
        seen.cpu = now_cpu
        total = max(seen.retired + sum(now_cpu.values()), seen.total)
        ratio = None
        if seen.at and now > seen.at:
            ratio = (total - seen.total) / TICK / (now - seen.at)
        seen.total, seen.at = total, now
        return seen, ratio
