"""The configuration directory's watch, on a real directory with inotify."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

from jlservice.supervisor.watch import DebouncedWatch


def test_a_burst_of_writes_is_reported_once_after_it_settles(tmp_path: Path) -> None:
    async def burst() -> list[float]:
        settled: list[float] = []
        watch = DebouncedWatch([str(tmp_path)], asyncio.get_running_loop(), settled.append)
        watch.start()
        try:
            began = time.monotonic()
            for i in range(5):
                (tmp_path / "jlservice.toml").write_text(f"# {i}\n")
                await asyncio.sleep(0.02)
            while not settled and time.monotonic() - began < 10:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # past the debounce: no second report for the burst
            return [first - began for first in settled]
        finally:
            watch.stop()

    (after,) = asyncio.run(burst())
    assert 0 <= after < 0.2  # the time of its first event, not of the report


def test_stopping_while_the_directory_is_written_logs_no_error(tmp_path: Path, caplog) -> None:
    """The log file beside the configuration is written as jlservice stops: watchdog's
    emitter sees an event after its stop began, which is no error of the service's."""
    done = threading.Event()

    def write() -> None:
        with (tmp_path / "jlservice.log").open("a") as log:
            while not done.is_set():
                log.write("a line\n")
                log.flush()

    async def start_and_stop() -> None:
        for _ in range(40):  # without the filter, about one stop in eight logged it
            watch = DebouncedWatch([str(tmp_path)], asyncio.get_running_loop(), lambda _: None)
            watch.start()
            await asyncio.sleep(0.01)
            watch.stop()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with caplog.at_level(logging.DEBUG):
            asyncio.run(start_and_stop())
    finally:
        done.set()
        writer.join()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
