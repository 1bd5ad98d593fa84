"""JupyterLab's output in our log: its levels kept, and a flood (notebook code writing to
the inherited pipe as fast as it can) costing the loop a bounded share."""

from __future__ import annotations

import asyncio
import time

import pytest

from jlservice.supervisor import lab_output


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.calls.append((level, event, fields))


@pytest.fixture
def logged(monkeypatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(lab_output, "logger", recorder)
    return recorder


def feed(*chunks: bytes) -> lab_output.LabOutput:
    async def run() -> lab_output.LabOutput:
        output = lab_output.LabOutput(4242, lambda: None)
        for chunk in chunks:
            output.data_received(chunk)
        output.connection_lost(None)
        return output

    return asyncio.run(run())


def test_levels_come_from_jupyter_servers_prefix_and_carry_on(logged) -> None:
    output = feed(b"[W 2026-11-22 03:51:41.512 ServerApp] careful\n  continued\n")
    assert [(level, f["line"]) for level, _, f in logged.calls] == [
        ("warning", "careful"),
        ("warning", "  continued"),
    ]
    assert output.last_line == "continued"


def test_a_flood_is_logged_at_the_rate_limit_and_counted(logged) -> None:
    began = time.process_time()
    output = feed(b"a\n" * 131072, b"the last words\n")
    assert time.process_time() - began < 1.0  # unlimited, this took ~3 s of the loop
    lines = [c for c in logged.calls if c[1] == "lab_output"]
    dropped = [c for c in logged.calls if c[1] == "lab_output_dropped"]
    assert len(lines) <= lab_output.LINES_PER_S + 5
    assert sum(f["lines"] for _, _, f in dropped) == 131073 - len(lines)
    assert output.last_line == "the last words"  # not logged, but kept for status


def test_a_huge_line_is_cut_and_its_last_words_are_short(logged) -> None:
    output = feed(b"x" * 300_000 + b"\n")
    (line,) = [f["line"] for _, e, f in logged.calls if e == "lab_output"]
    assert len(line) == lab_output.MAX_LINE
    assert output.last_line == "x" * lab_output.MAX_LAST_WORDS
