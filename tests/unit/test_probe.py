"""The supervisor's probe of JupyterLab, against servers the test plays: over TLS without
checking a certificate made for the public name, with no TLS context made per probe (each
would read the CA store: ~30 ms of the loop's CPU, every 0.1 s while JupyterLab starts);
bounded by one timeout on the monotonic clock, closing what it gave up on; and bounded in
what it reads from an answer the lab user may make say anything."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from helpers import played_server, tls_server
from helpers.played_server import answer as _answer

from jlservice.supervisor import probe

CLOSED_WITHIN_S = 2.0


def _ok(body: bytes = b"{}") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@contextlib.contextmanager
def _serving(serve, context: ssl.SSLContext | None = None, **kw) -> Iterator[str]:
    """played_server.serving, as the URL the probe asks."""
    with played_server.serving(serve, context, **kw) as port:
        yield f"{'https' if context else 'http'}://127.0.0.1:{port}/"


def _api_problem(url: str, timeout: float = 5.0) -> str | None:
    return asyncio.run(probe.api_problem(url, timeout))


def test_a_tls_jupyterlab_is_probed_without_checking_its_certificate(tmp_path):
    context = tls_server.server_context(tmp_path)  # a certificate for lab.example.org only
    seen: list[bytes] = []
    with _serving(_answer(_ok()), context, seen=seen) as url:
        assert _api_problem(url + "api") is None
    assert seen[0].startswith(b"GET /api HTTP/1.0\r\n")
    with _serving(_answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"), context) as url:
        assert _api_problem(url + "api") == f"{url}api answered HTTP 404"


def test_probes_read_no_ca_store(tmp_path, monkeypatch):
    loaded = []
    real = ssl.SSLContext.load_default_certs
    monkeypatch.setattr(
        ssl.SSLContext, "load_default_certs", lambda *a, **k: loaded.append(1) or real(*a, **k)
    )

    async def probes(url: str) -> list[str | None]:
        return [await probe.api_problem(url + "api", timeout=5) for _ in range(3)]

    with _serving(_answer(_ok()), tls_server.server_context(tmp_path)) as url:
        assert asyncio.run(probes(url)) == [None, None, None]
    assert loaded == []


def test_a_silent_server_is_given_up_on_in_time_and_its_connection_closed():
    seen: list[bytes] = []
    with _serving(lambda conn, stop: None, seen=seen) as url:  # reads the request, never answers
        begun = time.monotonic()
        assert _api_problem(url + "api", timeout=0.5) == f"{url}api: no answer within 0.5 s"
        assert time.monotonic() - begun < 0.5 + CLOSED_WITHIN_S
        deadline = time.monotonic() + CLOSED_WITHIN_S
        while "closed" not in str(seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen[-1] == b"closed", "the probe left its connection open"


def test_a_tls_error_is_said_so():
    """https to a server that speaks plain HTTP (a certfile missing from the lab's start)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/"

        def plain() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        server = threading.Thread(target=plain, daemon=True)
        server.start()
        problem = _api_problem(url + "api")
        server.join()
    assert problem.startswith(f"{url}api: TLS: ") and "not permitted" not in problem, problem


def test_a_closed_port_is_said_so():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: nobody else takes it
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/"
        assert _api_problem(url + "api") == f"{url}api: Connection refused"


def test_a_trickled_answer_is_bounded_as_a_whole():
    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(100):  # a header byte each 0.05 s: 5 s if nobody stops it
            conn.sendall(b"X")
            stop.wait(0.05)

    with _serving(trickle) as url:
        begun = time.monotonic()
        assert _api_problem(url + "api", timeout=0.5) == f"{url}api: no answer within 0.5 s"
        assert time.monotonic() - begun < 0.5 + CLOSED_WITHIN_S


def test_the_wall_clock_stepped_forward_mid_request_fails_no_probe(tmp_path, monkeypatch):
    """An NTP step or a resumed VM while the probe connects: the old client (tornado's)
    timed requests by time.time() and failed the one in flight at once."""
    real = time.time

    def step() -> None:
        monkeypatch.setattr(time, "time", lambda: real() + 12 * 3600)
        time.sleep(0.2)

    with _serving(_answer(_ok()), tls_server.server_context(tmp_path), accepted=step) as url:
        assert _api_problem(url + "api", timeout=5) is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "the answer is not HTTP"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 10_000, "headers over 64 KiB"),
        (b"HTTP/1.1 200 OK\r\nServer: x\r\n", "the connection closed before the headers ended"),
    ],
    ids=["not-http", "huge-head", "no-end-of-head"],
)
def test_an_answer_that_is_no_http_is_a_problem(raw, problem):
    with _serving(_answer(raw)) as url:
        assert _api_problem(url + "api") == f"{url}api: {problem}"


def test_the_probe_reads_no_body():
    """200 is all it asks: a body it would not use is not read (8 MiB every 0.1 s)."""
    with _serving(
        lambda conn, stop: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9000000\r\n\r\n")
    ) as url:
        assert _api_problem(url + "api", timeout=1) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 9999999999\r\n\r\n[]",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n[]",
        b"HTTP/1.1 200 OK\r\n\r\n[" + b'{"execution_state": "busy"},' * 400_000,
    ],
    ids=["huge-length", "short-body", "endless-body"],
)
def test_busy_kernels_is_unknown_from_a_body_it_cannot_read(raw):
    with _serving(_answer(raw)) as url:
        assert asyncio.run(probe.busy_kernels(url + "api/kernels", "t", 10, lambda: None)) is None


def test_busy_kernels_counts_an_answer_that_ends_with_its_connection():
    kernels = b'[{"id": "a", "execution_state": "busy"}, {"id": "b", "execution_state": "idle"}]'
    seen: list[bytes] = []
    with _serving(_answer(b"HTTP/1.0 200 OK\r\n\r\n" + kernels), seen=seen) as url:
        assert asyncio.run(probe.busy_kernels(url + "api/kernels", "t0k", 5, lambda: None)) == 1
    assert b"\r\nAuthorization: token t0k\r\n" in seen[0]


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_busy_kernels_asks_who_holds_the_port_once_connected_and_sends_a_stranger_nothing(
    tls, tmp_path
):
    """The reload's idle wait sends the token: who holds the port is asked once connected
    (asked before, the port could change hands in between) and a stranger gets no byte."""
    squatter = played_server.Squatter()
    seen: list[bytes] = []
    context = tls_server.server_context(tmp_path) if tls else None
    played = _serving(_answer(_ok(b"[]")), context, seen=seen, accepted=squatter.accepted)
    with played as url:
        assert asyncio.run(probe.busy_kernels(url + "api/kernels", "t0k", 5, squatter)) is None
    assert squatter.asked_once_connected == [True]
    assert set(seen) <= {b"", b"closed"}  # not a byte of the request (over TLS: no handshake)


def test_a_token_without_a_check_of_the_port_is_refused():
    seen: list[bytes] = []
    refused = pytest.raises(TypeError, match="a token goes only with a check of the port")
    with _serving(_answer(_ok(b"[]")), seen=seen) as url, refused:
        asyncio.run(probe._get(url + "api/kernels", 5, "t0k"))
    assert seen == []  # not even connected
