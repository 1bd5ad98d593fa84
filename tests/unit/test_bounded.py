"""What root reads from the lab user's processes — the warm parent's messages, JupyterLab's
API — is bounded in size and nesting and checked for shape: a hostile answer is a broken
answer, never an exception that takes the supervisor down."""

from __future__ import annotations

import asyncio
import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlservice import bounded
from jlservice.start.warm import parent, process
from jlservice.supervisor import probe

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "raw, why",
    [
        (DEEP, "nested deeper than 32 levels"),
        (b"[" * 33 + b"]" * 33, "nested deeper than 32 levels"),
        (b'{"a": ' * 33 + b"1" + b"}" * 33, "nested deeper than 32 levels"),
        (b" " * 1001, "larger than 1000 bytes"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"1" * 5000, "not JSON"),  # Python refuses to make an int of that many digits
    ],
    ids=["deep", "33-lists", "33-objects", "huge", "garbage", "binary", "long-int"],
)
def test_loads_refuses(raw: bytes, why: str) -> None:
    with pytest.raises(bounded.Malformed, match=why):
        bounded.loads(raw, 1000 if why.startswith("larger") else len(raw))


def test_loads_refuses_deep_json_with_little_stack_left() -> None:
    """Deep in the supervisor's stack the decoder's guard trips sooner: still Malformed."""

    def at_depth(levels: int) -> None:
        if levels:
            return at_depth(levels - 1)
        with pytest.raises(bounded.Malformed, match="nested"):
            bounded.loads(b"[" * 500 + b"]" * 500, 10_000)

    at_depth(sys.getrecursionlimit() - 200)


def test_loads_accepts_what_it_is_for() -> None:
    assert bounded.loads(b"[" * 32 + b"]" * 32, 100) is not None
    assert bounded.loads('{"a": [1, {"b": null}]}', 100) == {"a": [1, {"b": None}]}


@pytest.mark.parametrize("value", [{"a": 1}, "x", None, [1], [{"a": 1}, "x"]])
def test_objects_refuses_other_shapes(value: object) -> None:
    with pytest.raises(bounded.Malformed):
        bounded.objects(value)


def test_too_deep_counts_lists_and_dicts_without_recursing() -> None:
    value: object = 1
    for _ in range(100_000):
        value = [value]
    assert bounded.too_deep(value)
    assert not bounded.too_deep([{"a": [1]}], limit=3)
    assert bounded.too_deep([{"a": [[1]]}], limit=3)


# ── the warm parent's messages ──────────────────────────────────────────────


@pytest.mark.parametrize(
    "message, expected, parsed",
    [
        (b'{"pid": 42}', ("pid", "error"), ("pid", 42)),
        (b'{"error": "no such dir"}', ("pid", "error"), ("error", "no such dir")),
        (b'{"stale": true}', ("pid", "error", "stale"), ("stale", True)),
        (json.dumps({"error": "x" * 10_000}).encode(), ("error",), ("error", "x" * 500)),
    ],
)
def test_warm_parent_messages(message: bytes, expected: tuple[str, ...], parsed: tuple) -> None:
    assert process.parse(message, expected) == parsed


@pytest.mark.parametrize(
    "message",
    [
        b"[" * 30_000 + b"]" * 30_000,  # fits in one 64 KiB message
        b'{"pid": ' + b"[" * 40 + b"]" * 40 + b"}",
        b'{"pid": true}',
        b'{"pid": "42"}',
        b'{"pid": 42, "error": "x"}',
        b'{"error": ["x"]}',
        b'{"stale": true}',  # not at hello
        b"[42]",
        b"42",
        b"",
    ],
)
def test_warm_parent_messages_that_are_broken(message: bytes) -> None:
    with pytest.raises(ValueError, match=r"not a message|not JSON|nested"):
        process.parse(message, ("pid", "error"))


def test_the_warm_parents_snapshot_is_capped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(parent, "MAX_ENTRIES", 10)
    for i in range(50):
        (tmp_path / f"f{i}").touch()
    marks = parent.snapshot([str(tmp_path)])
    assert len(marks) == 10
    assert parent.snapshot([str(tmp_path)]) == marks  # stable while nothing changes


def test_the_keeper_knows_the_warm_parents_stale_exit() -> None:
    assert process.EXIT_STALE == parent.EXIT_STALE


# ── JupyterLab's api/kernels, for [reload] when = "idle" ────────────────────


@pytest.fixture
def lab_api() -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in for JupyterLab answering GET api/kernels with the body the test sets."""
    body = [b"[]"]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body[0])))
            self.end_headers()
            self.wfile.write(body[0])

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/api/kernels", body
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "reply",
    [
        b'{"kernels": []}',
        b'["busy"]',
        DEEP,
        b"[" + b'{"execution_state": "busy"},' * 400_000 + b"{}]",  # 11 MB
        b"not json",
    ],
    ids=["object", "strings", "deep", "huge", "garbage"],
)
def test_busy_kernels_is_unknown_for_a_malformed_answer(lab_api, reply: bytes) -> None:
    url, body = lab_api
    body[0] = reply
    assert asyncio.run(probe.busy_kernels(url, "token", 10, lambda: None)) is None


def test_busy_kernels_counts_busy_kernels(lab_api) -> None:
    url, body = lab_api
    body[0] = json.dumps(
        [{"execution_state": "busy"}, {"execution_state": "idle"}, {"execution_state": "busy"}]
    ).encode()
    assert asyncio.run(probe.busy_kernels(url, "token", 10, lambda: None)) == 2
