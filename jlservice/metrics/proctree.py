"""Every process on the machine in one pass over /proc: parent, CPU time, resident memory.

One read of /proc/PID/stat a process and round (what `ps` reads); a process that ends while
it is read is left out. Runs in the sampler thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cpu_ticks: int  # user + system time of the process itself (its live threads included)
    rss_pages: int
    start_ticks: int  # since boot: tells a process from a later one with its pid


class Table:
    """One round's processes, and who is whose child."""

    def __init__(self, procs: Iterable[Proc]) -> None:
        self.procs = {p.pid: p for p in procs}
        self.children: dict[int, list[int]] = {}
        for p in self.procs.values():
            self.children.setdefault(p.ppid, []).append(p.pid)

    def tree(self, root: int, limit: int = 100_000) -> Iterator[Proc]:
        """`root` and every process below it (at most `limit`)."""
        stack, seen = [root], 0
        while stack and seen < limit:
            pid = stack.pop()
            if (proc := self.procs.get(pid)) is None:
                continue
            seen += 1
            yield proc
            stack.extend(self.children.get(pid, ()))


def scan(proc: str = "/proc") -> Table:
    return Table(_read_all(proc))


def _read_all(proc: str) -> Iterator[Proc]:
    with os.scandir(proc) as entries:
        names = [e.name for e in entries if e.name.isdigit()]
    for name in names:
        try:
            with open(f"{proc}/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:  # ended meanwhile
            continue
        if (parsed := parse_stat(int(name), raw)) is not None:
            yield parsed


def parse_stat(pid: int, raw: bytes) -> Proc | None:
    """/proc/PID/stat; the name (in parentheses) may hold spaces and parentheses itself."""
    fields = raw.rpartition(b")")[2].split()
    try:
        return Proc(
            pid=pid,
            ppid=int(fields[1]),
            cpu_ticks=int(fields[11]) + int(fields[12]),
            rss_pages=int(fields[21]),
            start_ticks=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None
