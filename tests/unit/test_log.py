"""log: secrets never reach a line, journald priority prefixes, console and JSON output."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from jlservice import log


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[TextIO]:
    """A real file to log to (journald detection needs a real fd); logging restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with (tmp_path / "log.txt").open("w+", encoding="utf-8") as f:
        try:
            yield f
        finally:
            structlog.reset_defaults()
            root.handlers[:] = handlers
            root.setLevel(level)


def read(stream: TextIO) -> list[str]:
    log.flush()  # the writer thread has written everything logged so far
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def journal_env(stream: TextIO) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def configure(stream: TextIO, fmt: str = "console", level: str = "debug", **env: str) -> None:
    log.configure(level, fmt, stream=stream, environ=env)


def token() -> str:
    return secrets.token_hex(32)


# --- redaction ---------------------------------------------------------------------------

EMITTERS: dict[str, Callable[[object, str], None]] = {
    "in-event": lambda logger, s: logger.info(f"started with {s}"),
    "as-value": lambda logger, s: logger.info("lab_started", token=s),
    "in-url": lambda logger, s: logger.warning("login", url=f"http://h:8888/lab?token={s}&x=1"),
    "in-list": lambda logger, s: logger.info("spawn", argv=["jupyter-lab", f"--token={s}"]),
    "in-dict": lambda logger, s: logger.error("state", state={"token": s, "port": 1}),
}


@pytest.mark.parametrize("fmt", ["console", "json"])
@pytest.mark.parametrize("emit", EMITTERS.values(), ids=EMITTERS.keys())
def test_registered_secret_never_logged(stream: TextIO, fmt: str, emit) -> None:
    secret = token()
    log.add_secret(secret)
    configure(stream, fmt)
    emit(log.get("jlservice"), secret)
    lines = read(stream)
    assert len(lines) == 1
    assert secret not in lines[0]
    assert secret[:16] not in lines[0]
    assert "<redacted>" in lines[0]


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_secret_in_an_exception_is_redacted(stream: TextIO, fmt: str) -> None:
    secret = token()
    log.add_secret(secret)
    configure(stream, fmt)
    try:
        raise RuntimeError(f"bad token {secret}")
    except RuntimeError:
        log.get().exception("lab_failed")
    text = "\n".join(read(stream))
    assert "RuntimeError" in text
    assert secret not in text


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_token_query_string_redacted_without_registration(stream: TextIO, fmt: str) -> None:
    unregistered = token()
    configure(stream, fmt)
    log.get().info("lab_output", line=f"    http://127.0.0.1:8888/lab?token={unregistered}")
    (line,) = read(stream)
    assert unregistered not in line
    assert "token=<redacted>" in line


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_short_strings_are_not_secrets(stream: TextIO, fmt: str) -> None:
    """Registering a tiny 'secret' must not blank out every 'a' in the log."""
    log.add_secret("a")
    configure(stream, fmt)
    log.get().info("a_banana_with_a_apple")
    (line,) = read(stream)
    assert "a_banana_with_a_apple" in line


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_library_logs_are_redacted(stream: TextIO, fmt: str) -> None:
    """tornado logs request URLs, and a login URL carries ?token=."""
    secret = token()
    log.add_secret(secret)
    configure(stream, fmt)
    logging.getLogger("tornado.access").warning("302 GET /lab?token=%s (10.0.0.1)", token())
    logging.getLogger("jupyter_server").error("cannot use %s", secret)
    text = "\n".join(read(stream))
    assert "tornado.access" in text and "jupyter_server" in text
    assert "token=<redacted>" in text
    assert secret not in text
    assert re.search(r"token=[0-9a-f]{8}", text) is None


def test_library_logs_get_journal_priorities(stream: TextIO) -> None:
    configure(stream, "console", **journal_env(stream))
    logging.getLogger("tornado.general").warning("w")
    logging.getLogger("tornado.general").error("e")
    assert [line[:3] for line in read(stream)] == ["<4>", "<3>"]


def test_redact_function() -> None:
    secret = token()
    log.add_secret(secret)
    assert log.redact(f"x {secret} y {secret}") == "x <redacted> y <redacted>"
    assert log.redact("GET /api?token=0123456789abcdef") == "GET /api?token=<redacted>"
    assert log.redact("nothing to hide") == "nothing to hide"


@pytest.mark.parametrize(
    "secret",
    ["pässwörd-geheim", 'quo"te-pass-123', "back\\slash-pass"],
    ids=["non-ascii", "quote", "backslash"],
)
def test_json_lines_do_not_leak_escaped_secrets(stream: TextIO, secret: str) -> None:
    """JSON escapes some characters; the decoded line must not hold the secret either."""
    log.add_secret(secret)
    configure(stream, "json")
    log.get().info("login", password=secret)
    (line,) = read(stream)
    decoded = json.loads(line)
    assert not [v for v in decoded.values() if isinstance(v, str) and secret in v], line


# --- output formats ----------------------------------------------------------------------


def test_json_lines(stream: TextIO) -> None:
    configure(stream, "json")
    log.get().info("lab_started", pid=42, port=8888)
    log.get().warning("lab_slow", ready_s=1.5)
    first, second = (json.loads(line) for line in read(stream))
    assert first["event"] == "lab_started" and first["pid"] == 42 and first["level"] == "info"
    assert second["level"] == "warning" and second["ready_s"] == 1.5
    assert "timestamp" in first


def test_console_line(stream: TextIO) -> None:
    configure(stream, "console")
    log.get().info("lab_started", pid=42)
    (line,) = read(stream)
    assert "lab_started" in line and "pid=42" in line and "info" in line
    assert "\x1b[" not in line  # a file is not a terminal: no colours


def test_level_filters(stream: TextIO) -> None:
    configure(stream, "console", level="warning")
    logger = log.get()
    logger.debug("hidden_debug")
    logger.info("hidden_info")
    logger.warning("shown_warning")
    logger.error("shown_error")
    text = "\n".join(read(stream))
    assert "hidden" not in text
    assert "shown_warning" in text and "shown_error" in text


# --- journald ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_journal_priority_prefixes(stream: TextIO, fmt: str) -> None:
    configure(stream, fmt, **journal_env(stream))
    logger = log.get()
    logger.error("e_event")
    logger.warning("w_event")
    logger.info("i_event")
    logger.debug("d_event")
    lines = read(stream)
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<7>"]
    assert all(f"{e}_event" in line for e, line in zip("ewid", lines, strict=True))


def test_journal_prefixes_every_line_of_a_traceback(stream: TextIO) -> None:
    configure(stream, "console", **journal_env(stream))
    try:
        raise ValueError("boom")
    except ValueError:
        log.get().exception("lab_failed")
    lines = read(stream)
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines), lines


def test_journal_lines_have_no_timestamp(stream: TextIO) -> None:
    """journald stamps lines itself."""
    configure(stream, "json", **journal_env(stream))
    log.get().info("x")
    (line,) = read(stream)
    assert "timestamp" not in json.loads(line[3:])


@pytest.mark.parametrize("value", ["", "garbage", "1:2", "1:2:3"])
def test_no_prefix_when_stream_is_not_the_journal(stream: TextIO, value: str) -> None:
    configure(stream, "console", JOURNAL_STREAM=value)
    log.get().error("e_event")
    (line,) = read(stream)
    assert not line.startswith("<")


def test_stderr_is_journal_checks_device_and_inode(stream: TextIO, tmp_path: Path) -> None:
    assert log.stderr_is_journal(journal_env(stream), stream)
    with (tmp_path / "other").open("w") as other:
        assert not log.stderr_is_journal(journal_env(other), stream)
    assert not log.stderr_is_journal({}, stream)


# --- a stuck reader ----------------------------------------------------------------------


def test_a_reader_that_never_reads_does_not_block_logging_and_drops_are_counted() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    try:
        configure(stream, "json")
        logger = log.get("jlservice")
        before = log.dropped_lines()
        began = time.monotonic()
        for n in range(3 * log.MAX_QUEUED):  # the pipe (64 KiB) fills within a few hundred
            logger.info("line", n=n)
        assert time.monotonic() - began < 5  # never waited for the reader
        dropped = log.dropped_lines() - before
        assert dropped >= log.MAX_QUEUED
        began = time.monotonic()
        log.flush(timeout=0.3)  # the reader is still stuck: the flush gives up
        assert time.monotonic() - began < 2

        with os.fdopen(read_end, "rb") as reader:
            os.set_blocking(reader.fileno(), False)
            got = b""
            deadline = time.monotonic() + 10
            while b"log_lines_dropped" not in got and time.monotonic() < deadline:
                chunk = reader.read()
                got += chunk or b""
                time.sleep(0.01)
        lines = [json.loads(line) for line in got.splitlines()]
        assert any(entry["event"] == "log_lines_dropped" and entry["count"] >= 1 for entry in lines)
        ns = [entry["n"] for entry in lines if entry["event"] == "line"]
        assert ns == sorted(ns) and ns[0] == 0  # in order, the first ones kept
    finally:
        configure(sys.stderr)
        stream.close()


# --- text from outside -------------------------------------------------------------------

# What a process name (prctl PR_SET_NAME) or a line JupyterLab printed can hold: a new line
# that looks like jlservice's own, a fake journald priority, terminal escape sequences.
HOSTILE = "\n<0>supervisor_stopped\r\x1b[2J\x1b]0;owned\x07\x9b1m\u2028\udcff"


def _unsafe(text: str) -> list[str]:
    return [c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\udcff"]


@pytest.mark.parametrize("journal", [False, True], ids=["plain", "journal"])
def test_console_shows_hostile_text_escaped_on_one_line(stream: TextIO, journal: bool) -> None:
    configure(stream, "console", **(journal_env(stream) if journal else {}))
    log.get().error("lab_start_failed", problem=f"port in use by pid 7 ({HOSTILE})")
    log.get().info("lab_output", line=HOSTILE.replace(" ", ""))
    log.flush()
    stream.flush()
    stream.seek(0)
    text = stream.read()
    lines = text.split("\n")
    assert len(lines) == 3 and lines[2] == "", text  # two events, two lines
    assert not _unsafe("".join(lines)), text
    assert "\\n<0>supervisor_stopped\\r\\x1b[2J" in lines[0]
    assert "\\x1b]0;owned\\x07\\x9b1m\\u2028\\xff" in lines[1]
    if journal:
        assert [line[:3] for line in lines[:2]] == ["<3>", "<6>"]


def test_a_traceback_keeps_its_lines_but_no_escape_sequences(stream: TextIO) -> None:
    configure(stream, "console", **journal_env(stream))
    try:
        raise ValueError(f"bad name {HOSTILE}")
    except ValueError:
        log.get().exception("supervisor_failed")
    lines = read(stream)
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines), lines
    assert not _unsafe("".join(lines))


def test_json_lines_escape_hostile_text(stream: TextIO) -> None:
    configure(stream, "json")
    log.get().error("lab_start_failed", problem=HOSTILE)
    (line,) = read(stream)
    assert not _unsafe(line)
    assert json.loads(line)["problem"] == HOSTILE  # JSON keeps the text exact
