"""`jlservice top [--once] [--sort KEY]`: every notebook, live, like htop: state, idle time,
CPU, memory and its limit, GPU memory per GPU, restarts and OOM kills.

It shows what the supervisor published last (notebooks.json in the runtime dir, each
[metrics] interval), redrawn in place with rich; q or Ctrl-C quits, a key sorts. rich is
imported only here: the other commands (`jlservice token`) stay light.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator
from typing import Any

from jlservice import config, notebooks_file, state
from jlservice.cli._client import config_path, published
from jlservice.text import escape_controls

# key → (column, sort value of a row, largest first?)
SORTS: dict[str, tuple[str, Any, bool]] = {
    "m": ("MEMORY", lambda r: r.get("rss_bytes") or 0, True),
    "c": ("CPU%", lambda r: r.get("cpu_ratio") or 0.0, True),
    "g": ("GPU", lambda r: sum((r.get("gpu_memory_bytes") or {}).values()), True),
    "i": ("IDLE", lambda r: r.get("idle_seconds") or 0.0, True),
    "n": ("NOTEBOOK", lambda r: r.get("notebook") or "", False),
}
NAMES = {"memory": "m", "cpu": "c", "gpu": "g", "idle": "i", "notebook": "n"}
REDRAW_S = 1.0  # the table is redrawn this often (the data changes each [metrics] interval)


def register(sub, common: argparse.ArgumentParser) -> None:
    top = sub.add_parser(
        "top",
        parents=[common],
        help="every notebook's resources, live",
        description="A live view of every notebook: state, idle time, CPU, memory and its "
        "limit, GPU memory, restarts and OOM kills. Keys: m c g i n sort by memory, CPU, "
        "GPU, idle time, notebook; q quits.",
    )
    top.add_argument("--once", action="store_true", help="print the table once and exit")
    top.add_argument("--sort", choices=sorted(NAMES), default="memory", help="initial order")
    top.set_defaults(func=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console

    service = config.load_service(config_path(args))
    sort = NAMES[args.sort]
    if args.once:  # into a pipe: whole lines, however long (a terminal: its width)
        width = None if sys.stdout.isatty() else 100_000
        Console(width=width, soft_wrap=False).print(view(service, sort))
        return 0
    from rich.live import Live

    console = Console()
    with _keys() as keys, Live(view(service, sort), console=console, screen=True) as live:
        while True:
            key = keys(REDRAW_S)
            if key in ("q", "Q", "\x03"):
                return 0
            sort = key if key in SORTS else sort
            live.update(view(service, sort), refresh=True)


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """read(timeout) → the key pressed within it, or None; the terminal as it was after."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        tty.setcbreak(fd)

    def read(timeout: float) -> str | None:
        if not select.select([fd], [], [], timeout)[0]:
            return None
        return os.read(fd, 1).decode(errors="replace") or "q"  # end of input: quit

    try:
        yield read
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def view(service: config.ServiceConfig, sort: str) -> Any:
    from rich.console import Group
    from rich.text import Text

    try:
        current: state.State | None = published(service)
    except state.StateError:
        current = None
    running = current is not None and state.supervisor_alive(current)
    table = notebooks_file.read(service.runtime_dir) if running else None
    return Group(Text(_header(current, running, table)), _table(table, sort))


def _header(current: state.State | None, running: bool, table: dict | None) -> str:
    if current is None or not running:
        return "jlservice is not running"
    parts = [f"jlservice: JupyterLab {current.status}"]
    if table is not None:
        age = max(time.time() - float(table.get("at") or 0), 0)
        parts.append(f"{len(table.get('notebooks') or [])} kernels")
        parts.append(f"sampled {age:.0f} s ago (every {table.get('interval', '?')} s)")
    else:
        parts.append("no sample yet ([metrics] enabled = false?)")
    parts.append(f"OOM kills: {current.oom_kills}")
    if current.limits:
        parts.append(f"limits {current.limits}")
    return escape_controls(" · ".join(parts))


def _table(table: dict | None, sort: str) -> Any:
    from rich.table import Table
    from rich.text import Text

    column, key, reverse = SORTS[sort]
    out = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    # The notebook last, as htop puts the command: what does not fit ends in "…".
    heads = ["KERNEL", "STATE", "IDLE", "CPU%", "MEMORY", "LIMIT", "GPU", "PROCS", "RESTARTS"]
    for head in [*heads, "OOM", "NOTEBOOK"]:
        numeric = head not in ("NOTEBOOK", "KERNEL", "STATE", "GPU")
        title = f"{head}▼" if head == column else head
        out.add_column(
            title, justify="right" if numeric else "left", no_wrap=True, overflow="ellipsis"
        )
    rows = [r for r in (table or {}).get("notebooks") or [] if isinstance(r, dict)]
    for row in sorted(rows, key=key, reverse=reverse):
        # Text, never markup: a notebook path is the lab user's to choose ("[red]…").
        cells = [escape_controls(str(c)) for c in _cells(row)]
        out.add_row(*(Text(c) for c in cells))
    return out


def _cells(row: dict) -> list[object]:
    gpu = row.get("gpu_memory_bytes") or {}
    ratio = row.get("cpu_ratio")
    return [
        str(row.get("kernel_id", ""))[:8],
        row.get("state", ""),
        _duration(row.get("idle_seconds")),
        f"{ratio * 100:.0f}" if isinstance(ratio, (int, float)) else "-",
        _size(row.get("memory_charge_bytes") or row.get("rss_bytes")),
        _size(row.get("memory_limit_bytes")),
        " ".join(f"{g}:{_size(b)}" for g, b in sorted(gpu.items())) or "-",
        row.get("processes", ""),
        row.get("restarts", 0),
        row.get("oom_kills", 0),
        row.get("notebook") or "(no notebook)",
    ]


def _size(n: object) -> str:
    if not isinstance(n, (int, float)) or n <= 0:
        return "-"
    for unit, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n / 2**10:.0f}K"


def _duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
