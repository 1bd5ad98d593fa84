"""The exporter's HTTP server, real on a free port: the bearer token, and clients that
connect and say nothing."""

from __future__ import annotations

import dataclasses
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from helpers.procs import free_port, wait_for

from jlservice.config import MetricsConfig
from jlservice.metrics import server
from jlservice.metrics.exporter import Exporter
from jlservice.metrics.view import SupervisorView

TOKEN = "f00dfeed" * 8


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    settings = MetricsConfig(listen=f"127.0.0.1:{free_port()}", gpu=False, bearer_token=TOKEN)
    exporter = Exporter(SupervisorView("1.0", "alice", "/"), settings)
    exporter.start()
    yield exporter
    exporter.stop()


def _get(exporter: Exporter, authorization: str | None = None) -> requests.Response:
    headers = {"Authorization": authorization} if authorization else {}
    return requests.get(f"http://{exporter.settings.listen}/metrics", headers=headers, timeout=10)


def test_only_a_scrape_with_the_token_gets_the_metrics(exporter) -> None:
    for refused in (None, "Bearer wrong", f"token {TOKEN}", f"Bearer {TOKEN}x", "Bearer", TOKEN):
        response = _get(exporter, refused)
        assert response.status_code == 401, refused
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="jlservice metrics"'
        assert "jlservice_" not in response.text and "process_" not in response.text
    for accepted in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
        response = _get(exporter, accepted)
        assert response.status_code == 200 and "jlservice_up 0.0" in response.text


def test_a_reload_changes_the_token_without_a_restart(exporter) -> None:
    new = "c0ffee00" * 8
    exporter.apply(dataclasses.replace(exporter.settings, bearer_token=new))
    assert _get(exporter, f"Bearer {TOKEN}").status_code == 401
    assert _get(exporter, f"Bearer {new}").status_code == 200
    exporter.apply(dataclasses.replace(exporter.settings, bearer_token=""))
    assert _get(exporter).status_code == 200


def test_silent_clients_hold_few_threads_and_not_for_long(exporter) -> None:
    """Any local account can connect and send nothing: the supervisor starts at most
    MAX_CLIENTS threads for them, closes the rest at once, and drops each after its
    timeout; scrapes are served again then."""
    before = peak = threading.active_count()
    ip, port = exporter.settings.address
    silent = [socket.create_connection((ip, port)) for _ in range(server.MAX_CLIENTS * 3)]
    opened = time.monotonic()
    closed_after: dict[socket.socket, float] = {}
    try:
        while len(closed_after) < len(silent) and time.monotonic() - opened < 30:
            waiting = [s for s in silent if s not in closed_after]
            for s in select.select(waiting, [], [], 0.2)[0]:
                assert s.recv(1) == b""
                closed_after[s] = time.monotonic() - opened
            peak = max(peak, threading.active_count())
    finally:
        for s in silent:
            s.close()
    assert len(closed_after) == len(silent)  # none is held for ever
    assert peak <= before + server.MAX_CLIENTS
    early = sum(after < server.CLIENT_TIMEOUT for after in closed_after.values())
    assert early >= len(silent) - server.MAX_CLIENTS  # closed without waiting for them
    wait_for(lambda: _get(exporter, f"Bearer {TOKEN}").status_code == 200, 10, "a scrape")


def test_trickling_clients_are_dropped_once_their_time_is_up(exporter, monkeypatch) -> None:
    """A byte every 0.3 s from each of MAX_CLIENTS local connections, each read well within
    any timeout: every thread the server has is theirs, until the time for a whole request
    is up. Then a scrape is served again."""
    monkeypatch.setattr(server, "CLIENT_TIMEOUT", 1.0)  # 5 s by default: the test, shorter
    ip, port = exporter.settings.address
    trickling = [socket.create_connection((ip, port)) for _ in range(server.MAX_CLIENTS)]
    opened = time.monotonic()
    try:
        time.sleep(0.5)  # all accepted, each on a thread of its own
        for s in trickling:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
        ends = opened + server.CLIENT_TIMEOUT + 5
        while time.monotonic() < ends and _open(trickling):
            for s in _open(trickling):
                s.sendall(b"X")
            time.sleep(0.3)
        assert not _open(trickling), "a client that never ends its request holds a thread"
        assert time.monotonic() - opened < server.CLIENT_TIMEOUT + 3  # 0.5 s to accept
    finally:
        for s in trickling:
            s.close()
    assert _get(exporter, f"Bearer {TOKEN}").status_code == 200


def _open(sockets: list[socket.socket]) -> list[socket.socket]:
    """Those the server has not closed yet (a read would not see the end)."""
    closed = select.select(sockets, [], [], 0)[0]
    return [s for s in sockets if s not in closed]


def _wakeups(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_server_sleeps_until_a_scrape_and_a_stop_frees_its_port(exporter) -> None:
    """No wake-ups while nobody scrapes (an idle supervisor costs nothing), and the stop
    needs no poll to notice it: the port is free again as stop() returns."""
    (thread,) = (t for t in threading.enumerate() if t.name == "jlservice-metrics-http")
    assert _get(exporter, f"Bearer {TOKEN}").status_code == 200
    before = _wakeups(thread)
    time.sleep(1.2)  # socketserver's serve_forever would have woken twice
    assert _wakeups(thread) == before
    assert _get(exporter, f"Bearer {TOKEN}").status_code == 200  # still serving
    exporter.stop()
    assert not thread.is_alive()
    with socket.socket() as again:  # as a new server binds it (the scrapes' TIME_WAIT)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(exporter.settings.address)
