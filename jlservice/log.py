"""structlog set-up: console or JSON lines, journald priorities, and secret redaction.

Lines are written by a thread of their own: a reader of stderr that is stuck (a frozen
journald, a pipe nobody reads) must never block the supervisor's loop. Lines that do not
fit in the queue meanwhile are dropped and counted, and the count is logged once the
reader takes lines again.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

from jlservice.text import escape_controls

# syslog priorities, for `journalctl -p` when stderr is the journal
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_TOKEN_PARAM = re.compile(r"(token=)[0-9A-Za-z_\-]{8,}")
_REDACTED = "<redacted>"
_secrets: set[str] = set()
MAX_QUEUED = 10_000  # lines waiting for a slow reader; more are dropped


def add_secret(secret: str) -> None:
    """Never let `secret` reach a log line again (tokens, passwords)."""
    if len(secret) >= 8:
        _secrets.add(secret)


def redact(text: str) -> str:
    for secret in _secrets:
        text = text.replace(secret, _REDACTED)
    return _TOKEN_PARAM.sub(r"\1" + _REDACTED, text)


def stderr_is_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    try:
        dev, ino = (int(x) for x in environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _Escaped(str):
    """Text with its control characters escaped, however the console renderer shows it: as
    the string itself, or through repr() (which then escapes them once, not twice)."""

    def __new__(cls, escaped: str, original: str) -> _Escaped:
        self = super().__new__(cls, escaped)
        self._repr = repr(original)
        return self

    def __repr__(self) -> str:
        return self._repr


def _console_safe(key: str, value: str) -> str:
    """A value as the console may show it: a process name or a line JupyterLab printed must
    not move the cursor, recolour the terminal or start a line of its own (JSON escapes these
    itself). A traceback keeps its line breaks."""
    keep = "\n" if key == "exception" else ""
    escaped = escape_controls(value, keep)
    return value if escaped == value else _Escaped(escaped, value)


class _Renderer:
    def __init__(self, fmt: str, journal: bool, colors: bool) -> None:
        self._journal = journal
        self._console = fmt != "json"
        if fmt == "json":
            self._inner: Any = structlog.processors.JSONRenderer()
        else:
            self._inner = structlog.dev.ConsoleRenderer(colors=colors, pad_event_to=0)

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        level = event.get("level", method)
        # Redact before rendering (JSON would escape a secret's quotes and non-ASCII letters
        # out of recognition) and after (a secret inside a formatted exception).
        event = {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}
        if self._console:
            event = {k: _console_safe(k, v) if isinstance(v, str) else v for k, v in event.items()}
        line = redact(self._inner(logger, method, event))
        if self._journal:
            prefix = f"<{_PRIORITY.get(level, 6)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line


class _Writer:
    """A structlog logger whose lines a daemon thread writes to `stream`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.dropped = 0  # since the start
        self._unreported = 0
        self._lines: collections.deque[str] = collections.deque()
        self._ready = threading.Condition()
        self._busy = False
        threading.Thread(target=self._write_forever, name="log-writer", daemon=True).start()

    def msg(self, line: str) -> None:
        with self._ready:
            if len(self._lines) >= MAX_QUEUED:
                self.dropped += 1
                self._unreported += 1
                return
            self._lines.append(line)
            self._ready.notify()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg

    def flush(self, timeout: float) -> None:
        """Wait (at most `timeout` s) until every queued line has been written."""
        deadline = time.monotonic() + timeout
        with self._ready:
            while (self._lines or self._busy) and time.monotonic() < deadline:
                self._ready.wait(min(0.05, max(deadline - time.monotonic(), 0)))

    def _write_forever(self) -> None:
        while True:
            with self._ready:
                while not self._lines:
                    self._busy = False
                    self._ready.notify_all()
                    self._ready.wait()
                lines, self._lines = list(self._lines), collections.deque()
                self._busy = True
                unreported, self._unreported = self._unreported, 0
            try:
                self.stream.write("".join(line + "\n" for line in lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed stream: nothing to write to
            if unreported:
                get("jlservice.log").warning("log_lines_dropped", count=unreported)


_writers: dict[int, _Writer] = {}


def _writer(stream: TextIO) -> _Writer:
    """One writer per stream, kept across configure() calls (a reload changes the format)."""
    writer = _writers.get(id(stream))
    if writer is None or writer.stream is not stream:
        writer = _writers[id(stream)] = _Writer(stream)
    return writer


def dropped_lines() -> int:
    """Log lines dropped since the start because nobody read them in time."""
    return sum(w.dropped for w in _writers.values())


def flush(timeout: float = 2.0) -> None:
    """Before exiting: write what is queued, unless the reader stays stuck for `timeout`."""
    for writer in list(_writers.values()):
        writer.flush(timeout)


class _LibraryLogs(logging.Handler):
    """Libraries log through the standard logging module: re-emit their lines through ours."""

    def emit(self, record: logging.LogRecord) -> None:
        structlog.get_logger(record.name).log(
            record.levelno, "library_log", logger=record.name, line=record.getMessage()
        )


def configure(
    level: str = "info",
    fmt: str = "console",
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    stream = stream or sys.stderr
    writer = _writer(stream)
    environ = os.environ if environ is None else environ
    journal = stderr_is_journal(environ, stream)
    timestamps = [] if journal else [structlog.processors.TimeStamper(fmt="iso", utc=False)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *timestamps,
            structlog.processors.format_exc_info,
            _Renderer(fmt, journal, colors=stream.isatty() and not journal),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(handlers=[_LibraryLogs()], level=logging.WARNING, force=True)


def get(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
