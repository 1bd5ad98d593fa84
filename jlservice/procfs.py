"""What /proc says of a process, without importing psutil (`jlservice token` stays light)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

_ESCAPED = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space in a path as \040


def start_time(pid: int) -> float | None:
    """Start time of `pid` in seconds since the epoch, from /proc (no psutil import)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot: what tells a process from a later one
    with its pid, unlike start_time(), which moves when the wall clock is stepped (NTP)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid`, from /proc (readable for any process; no psutil import)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def mounts(mountinfo: str = "/proc/self/mountinfo") -> Iterator[tuple[Path, str, list[str]]]:
    """(mount point, filesystem type, super options) of each line of `mountinfo`."""
    text = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = Path(mountinfo).read_text()
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) >= 5 and len(rest) >= 3:
            point = _ESCAPED.sub(lambda m: chr(int(m[1], 8)), fields[4])
            yield Path(point), rest[0], rest[2].split(",")
