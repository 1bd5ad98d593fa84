"""Which notebook the OOM killer hit, from two sources:

- the kernel log (/dev/kmsg, root's to read, followed with the loop's add_reader: at once):
  what it killed, its memory; the sampler's last round, the dead process's ancestry or its
  kernel's own cgroup say whose tree it was in. Kills of other processes are not ours.
- each kernel's own cgroup (kernels.limits), where kernels have one: its OOM-kill counter,
  read in every sampler round — what the shipped unit leaves (ProtectKernelLogs=yes hides
  the kernel log), at the sampler's pace.

For a kernel with a cgroup of its own, that cgroup's counter is the count; the log's line only
adds what was killed. Linux counts the kill before it logs it, so a round may see a kill
whose line is still to come: while the log is followed, a kill the counter shows and no line
told yet is told (without the detail) only if the next round still shows it untold.

A collaborator of the supervisor's loop: it logs one warning per kill and posts OomKilled;
a kernel's kill it also tells JupyterLab's open tabs (kernels.labnotice).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jlservice import labapi, log
from jlservice.labapi import Endpoint
from jlservice.metrics import usage
from jlservice.metrics.sampler import Snapshot
from jlservice.metrics.usage import Usage
from jlservice.supervisor.events import Event, OomKilled

logger = log.get("jlservice.kernels")

KMSG = "/dev/kmsg"
ASK_TIMEOUT_S = 2.0  # for JupyterLab's sessions: a new kernel's notebook
MAX_DEPTH = 64
_OOM_KILL = re.compile(
    r"oom-kill:constraint=(\w+),.*?(?:oom_memcg=([^,]*),)?task_memcg=([^,]*),task=.*,pid=(\d+),"
)
_KILLED = re.compile(
    r"Killed process (\d+) \((.{0,64})\) total-vm:\d+kB, anon-rss:(\d+)kB, "
    r"file-rss:(\d+)kB, shmem-rss:(\d+)kB"
)
# A kernel's own cgroup (kernels.limits) names it: <unit>/kernels/kernel-<id>[/…]
_KERNEL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class _Kill:
    pid: int | None
    process: str
    memory: int  # bytes resident (or its cgroup's peak)
    kernel_id: str | None
    memcg: str | None  # the cgroup whose limit was hit ("": the whole machine; None: unknown)
    in_cgroup: bool = False  # in the kernel's own cgroup, whose counter counts it


class OomWatch:
    def __init__(
        self,
        post: Callable[[Event], None],
        snapshot: Callable[[], Snapshot],
        endpoint: Callable[[], Endpoint | None],
        limit: Callable[[str], int | None],
        launched: Callable[[], dict[int, str]] = dict,
        path: str = KMSG,
        kernels_cgroup: str | None = None,
        kills: Callable[[str], int | None] = lambda _kernel_id: None,
        tell_lab: Callable[[OomKilled], None] = lambda _kill: None,
    ) -> None:
        """`snapshot`: the sampler's last round; `endpoint`: the JupyterLab that runs;
        `limit(memcg)`: the memory limit of the cgroup the kernel log names;
        `kernels_cgroup`: where the kernels' own cgroups are (kernels.limits), if anywhere;
        `kills(kernel id)`: the OOM-kill counter of its own cgroup now (None: it has none);
        `tell_lab(kill)`: a kernel's kill told to JupyterLab's tabs (never waiting)."""
        self._tell_lab = tell_lab
        self._kernels_cgroup = kernels_cgroup
        self._kills = kills
        self._post = post
        self._snapshot = snapshot
        self._endpoint = endpoint
        self._limit = limit
        self._launched = launched  # pid → kernel id of kernels started since the last round
        self._path = path
        self._fd: int | None = None
        # pid → what oom-kill said: constraint, memcg, kernel id, in the kernel's own cgroup
        self._pending: dict[int, tuple[str, str, str | None, bool]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._counted: dict[str, int] = {}  # kernel id → kills in its own cgroup told
        self._shown: dict[str, int] = {}  # kernel id → its cgroup's counter, last round

    def start(self, loop: asyncio.AbstractEventLoop) -> str | None:
        """Follow the kernel log from now on; why it cannot, or None."""
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            return f"cannot read {self._path}: {exc.strerror}"
        os.lseek(fd, 0, os.SEEK_END)  # what happened before jlservice started is not news
        self._fd = fd
        loop.add_reader(fd, self._readable)
        return None

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None

    def _readable(self) -> None:
        assert self._fd is not None
        while True:
            try:
                record = os.read(self._fd, 8192)  # one record a read
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before it was read: go on
                    continue
                return
            if not record:
                return
            self.line(record.decode(errors="replace").partition(";")[2].strip())

    def line(self, text: str) -> None:
        """One message of the kernel log."""
        if (match := _OOM_KILL.search(text)) is not None:
            constraint, memcg, task_memcg, pid = match.groups()
            # Still there (dying, or a zombie its parent has not reaped): whose is it?
            own = self._cgroup_names(task_memcg)
            kernel_id = own or self._kernel_of(int(pid))
            self._pending[int(pid)] = (constraint, memcg or "", kernel_id, own is not None)
            return
        if (match := _KILLED.search(text)) is None:
            return
        pid = int(match[1])
        pending = self._pending.pop(pid, None)
        constraint, memcg, kernel_id, in_cgroup = pending or ("", "", None, False)
        kernel_id = kernel_id if kernel_id is not None else self._kernel_of(pid)
        if pending is None and kernel_id is not None:
            # No summary line (the kernel rate-limits it in a burst): a kill its own cgroup
            # counts and nobody told yet is taken as the cgroup's, so that it counts once.
            in_cgroup = self._kills(kernel_id) is not None and self._untold(kernel_id)
        kill = _Kill(
            pid=pid,
            process=match[2],
            memory=sum(int(kb) for kb in match.groups()[2:]) * 1024,
            kernel_id=kernel_id,
            memcg=memcg if constraint == "CONSTRAINT_MEMCG" else ("" if constraint else None),
            in_cgroup=in_cgroup,
        )
        if kill.kernel_id is None and not self._ours(pid):
            return
        if in_cgroup and not self._untold(kill.kernel_id or ""):
            detail = dataclasses.asdict(kill)
            del detail["in_cgroup"]
            logger.info("kernel_oom_kill_detail", **detail)  # a round told (and counted) it
            return
        used = next((u for u in self._snapshot().notebooks if u.kernel_id == kill.kernel_id), None)
        if kill.kernel_id is not None and used is None and (endpoint := self._endpoint()):
            # A kernel started since the last round: its notebook, from JupyterLab.
            task = asyncio.get_running_loop().create_task(self._ask_and_tell(endpoint, kill))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._tell(kill, used, used.notebook if used is not None else "")

    async def _ask_and_tell(self, endpoint: Endpoint, kill: _Kill) -> None:
        found = await asyncio.to_thread(labapi.fetch, endpoint, ASK_TIMEOUT_S)
        self._tell(kill, None, found.notebooks.get(kill.kernel_id or "", "") if found else "")

    def _tell(self, kill: _Kill, used: Usage | None, notebook: str) -> None:
        # The limit that was hit: the kernel's own ([kernels] memory_max), that of the memory
        # cgroup the kernel log names (the service's, a container's: shared with the others),
        # or none (the whole machine ran out). Known only from the kernel log's summary line:
        # a kernel's cgroup counts every kill in it, whichever limit ran out.
        cgroup_limit = used.cgroup.limit if used is not None and used.cgroup is not None else None
        own: bool | None
        if kill.memcg is None:  # the cgroup's counter, or no summary line: the kernel's limit
            own, limit = None, cgroup_limit
        elif _is_kernels_own(kill.memcg, kill.kernel_id):
            own, limit = True, cgroup_limit if cgroup_limit is not None else self._limit(kill.memcg)
        else:
            own, limit = False, self._limit(kill.memcg) if kill.memcg else None
        event = OomKilled(
            pid=kill.pid,
            process=kill.process,
            kernel_id=kill.kernel_id,
            notebook=notebook,
            memory_bytes=kill.memory,
            notebook_memory_bytes=used.rss_bytes if used is not None else None,
            limit_bytes=limit,
            cgroup=kill.memcg or "",
            own_limit=own,
        )
        if kill.kernel_id is not None and kill.in_cgroup:
            self._counted[kill.kernel_id] = self._counted.get(kill.kernel_id, 0) + 1
        logger.warning("kernel_oom_killed" if kill.kernel_id else "oom_killed", **event.fields())
        self._post(event)
        if kill.kernel_id is not None:
            self._tell_lab(event)

    def _untold(self, kernel_id: str) -> bool:
        """Whether a kill the log tells of in `kernel_id`'s tree is not counted yet: its
        cgroup (which counted it before the line) shows more than were told."""
        count = self._kills(kernel_id)
        return count is None or count > self._counted.get(kernel_id, 0)

    def sampled(self, snap: Snapshot) -> None:
        """A sampler round: kills the kernels' own cgroups count that were not told yet."""
        for used in snap.notebooks:
            if used.cgroup is None:
                continue
            count = used.cgroup.oom_kills
            # While the log is followed, what a round shows first waits for its line a round.
            sure = min(count, self._shown.get(used.kernel_id, 0)) if self._fd is not None else count
            self._shown[used.kernel_id] = count
            for _ in range(sure - self._counted.get(used.kernel_id, 0)):
                peak = used.cgroup.peak if used.cgroup.peak is not None else used.cgroup.charge
                self._tell(_Kill(None, "", peak, used.kernel_id, None, True), used, used.notebook)
        if snap.kernel_states is not None:  # JupyterLab answered: kernels it no longer has
            for counts in (self._counted, self._shown):
                for gone in counts.keys() - snap.kernels:
                    del counts[gone]

    def _cgroup_names(self, task_memcg: str) -> str | None:
        """The running kernel whose own cgroup `task_memcg` is in: only one of ours counts
        (anyone may name a cgroup of theirs kernel-<id>)."""
        prefix = f"{self._kernels_cgroup}/kernel-"
        if self._kernels_cgroup is None or not task_memcg.startswith(prefix):
            return None
        kernel_id = task_memcg[len(prefix) :].partition("/")[0]
        running = {*self._snapshot().owners.values(), *self._launched().values()}
        return kernel_id if _KERNEL_ID.fullmatch(kernel_id) and kernel_id in running else None

    def _kernel_of(self, pid: int) -> str | None:
        """The kernel whose tree `pid` was in: as the last round saw it, or by its ancestry
        (a process, or a kernel, started since)."""
        owners = self._snapshot().owners
        chain = _ancestry(pid)
        launched = self._launched()
        for ancestor in chain:
            if ancestor in owners:
                return owners[ancestor]
            if ancestor in launched:
                return launched[ancestor]
        endpoint = self._endpoint()
        return usage.kernel_in(chain, endpoint, os.getpid()) if endpoint is not None else None

    def _ours(self, pid: int) -> bool:
        """A process of this service that is no kernel's: JupyterLab, jlservice, a terminal."""
        endpoint = self._endpoint()
        ours = {os.getpid(), *([endpoint.pid] if endpoint is not None else [])}
        return bool(ours & set(_ancestry(pid)))


def _ancestry(pid: int) -> list[int]:
    """`pid` and its ancestors, nearest first, as far as /proc still has them."""
    chain = []
    for _ in range(MAX_DEPTH):
        if pid <= 1:
            break
        chain.append(pid)
        try:
            raw = Path(f"/proc/{pid}/stat").read_bytes()
            pid = int(raw.rpartition(b")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return chain


def _is_kernels_own(memcg: str, kernel_id: str | None) -> bool:
    return kernel_id is not None and memcg.endswith(f"/kernel-{kernel_id}")
