"""Capture JupyterLab's output and re-emit each line through our log with its own level."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from jlservice import log

logger = log.get("jlservice.lab")

# "[W 2026-11-22 03:51:41.512 ServerApp] message"
_LINE = re.compile(r"^\[(?P<level>[DIWEC]) \S+ \S+ (?P<source>[^\]]+)\] ?(?P<message>.*)$")
MAX_LINE = 64 * 1024
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

    def data_received(self, data: bytes) -> None:
        # A carriage return (progress bars) ends a line too, and no line grows without limit:
        # kernels and their children inherit this pipe.
        self._buffer += data.replace(b"\r", b"\n")
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_LINE:
            lines.append(self._buffer)
            self._buffer = b""
        for raw in lines:
            self._emit(raw.decode("utf-8", "replace").rstrip("\r"))
        if lines:
            self._on_line()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buffer:
            self._emit(self._buffer.decode("utf-8", "replace"))
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
        self.last_line = message.strip()
        getattr(logger, self._level)(self.event, pid=self.pid, source=self._source, line=message)
