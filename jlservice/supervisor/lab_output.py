"""Capture JupyterLab's output and re-emit each line through our log with its own level.

Kernels and whatever they start inherit this pipe, and notebook code can write to it as
fast as it likes: lines are cut at MAX_LINE and logged at most LINES_PER_S a second (the
rest counted, in one line), so that a flood costs the supervisor's loop a bounded share.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

from jlservice import log

logger = log.get("jlservice.lab")

# "[W 2026-11-22 03:51:41.512 ServerApp] message"
_LINE = re.compile(r"^\[(?P<level>[DIWEC]) \S+ \S+ (?P<source>[^\]]+)\] ?(?P<message>.*)$")
MAX_LINE = 16 * 1024  # characters of a line logged; the rest is cut
MAX_LAST_WORDS = 500  # characters of the last line kept, for status and state.json
LINES_PER_S = 1000
_LEVELS = {"D": "debug", "I": "info", "W": "warning", "E": "error", "C": "critical"}


class LabOutput(asyncio.Protocol):
    """Protocol for the child's stdout+stderr pipe."""

    event = "lab_output"

    def __init__(self, pid: int, on_line: Callable[[], None]) -> None:
        self.pid = pid
        self._on_line = on_line
        self._buffer = b""
        self._level = "info"
        self._source = "lab"
        self.last_line: str | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._allowance = float(LINES_PER_S)  # lines that may be logged now
        self._refilled = time.monotonic()
        self._dropped = 0  # lines not logged since the last that was

    def data_received(self, data: bytes) -> None:
        # A carriage return (progress bars) ends a line too, and no line grows without limit:
        # kernels and their children inherit this pipe.
        self._buffer += data.replace(b"\r", b"\n")
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            lines.append(self._buffer)
            self._buffer = b""
        if not lines:
            return
        allowed = self._budget(len(lines))
        for raw in lines[:allowed]:
            self._emit(_text(raw))
        if allowed < len(lines) and (last := _text(lines[-1]).strip()):
            self.last_line = last[:MAX_LAST_WORDS]  # not logged, but the last words
        self._on_line()

    def _budget(self, count: int) -> int:
        """How many of `count` new lines may be logged; the others are counted as dropped."""
        now = time.monotonic()
        self._allowance = min(LINES_PER_S, self._allowance + (now - self._refilled) * LINES_PER_S)
        self._refilled = now
        allowed = min(count, int(self._allowance))
        self._allowance -= allowed
        if allowed:
            self._report_dropped()
        self._dropped += count - allowed
        return allowed

    def _report_dropped(self) -> None:
        if self._dropped:
            logger.warning(
                "lab_output_dropped",
                pid=self.pid,
                lines=self._dropped,
                problem=f"JupyterLab or its kernels wrote over {LINES_PER_S} lines a second",
            )
            self._dropped = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._report_dropped()
        if self._buffer:
            self._emit(_text(self._buffer))
            self._buffer = b""
        if not self.closed.done():
            self.closed.set_result(None)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        match = _LINE.match(line)
        if match:
            self._level = _LEVELS[match["level"]]
            self._source = match["source"]
            message = match["message"]
        else:  # continuation lines (URLs, tracebacks) keep the level of the line above
            message = line
        self.last_line = message.strip()[:MAX_LAST_WORDS]
        getattr(logger, self._level)(self.event, pid=self.pid, source=self._source, line=message)


def _text(raw: bytes) -> str:
    """At most MAX_LINE characters of a line (UTF-8 takes at most 4 bytes a character)."""
    return raw[: MAX_LINE * 4].decode("utf-8", "replace")[:MAX_LINE]
