"""structlog set-up: console or JSON lines, journald priorities, and secret redaction."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

from jlservice.text import escape_controls

# syslog priorities, for `journalctl -p` when stderr is the journal
_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_TOKEN_PARAM = re.compile(r"(token=)[0-9A-Za-z_\-]{8,}")
_REDACTED = "<redacted>"
_secrets: set[str] = set()


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
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(handlers=[_LibraryLogs()], level=logging.WARNING, force=True)


def get(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
