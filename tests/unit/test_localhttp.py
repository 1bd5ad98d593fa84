"""Root's HTTP to this machine's servers: the timeout given bounds the whole answer. The lab
user's JupyterLab could otherwise trickle its headers a byte at a time, each read well within
any timeout, and hold root's sampler, notices or doctor for as long as it likes."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlservice import localhttp
from jlservice.admin import tls

TRICKLE_S = 20  # how long the server trickles: a client bounded per read waits all of it


def _trickle(conn: socket.socket, stop: threading.Event) -> None:
    try:
        conn.recv(65536)  # the request
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        ends = time.monotonic() + TRICKLE_S
        while not stop.is_set() and time.monotonic() < ends:
            conn.sendall(b"a")  # a byte each 0.05 s: under any one read's timeout
            stop.wait(0.05)
    except OSError:  # the client gave up
        pass
    finally:
        conn.close()


@contextlib.contextmanager
def _trickling(context: ssl.SSLContext | None) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            if context is not None:
                conn = context.wrap_socket(conn, server_side=True)
            _trickle(conn, stop)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()
        server.join(30)


def _server_tls(tmp_path: Path) -> ssl.SSLContext:
    cert, key = tls.self_signed(["lab.example.org"], 30)
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return context


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_headers_trickled_a_byte_at_a_time_end_at_the_timeout(scheme, tmp_path) -> None:
    context = _server_tls(tmp_path) if scheme == "https" else None
    with _trickling(context) as port:
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/api")
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            localhttp.OPENER.open(request, timeout=0.5)
        assert time.monotonic() - began < TRICKLE_S / 4
