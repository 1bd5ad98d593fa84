"""A server the test plays, on a free loopback port: each connection's request head is read,
then answered by the test's `serve(conn, stop)` on a thread of its own (`stop` is set when
the test is over: a trickle ends then)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator

Serve = Callable[[socket.socket, threading.Event], None]


def answer(raw: bytes) -> Serve:
    """`raw`, then the end of what the server sends (as an HTTP/1.0 server ends an answer)."""

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(raw)
        conn.shutdown(socket.SHUT_WR)

    return serve


@contextlib.contextmanager
def serving(
    serve: Serve,
    context: ssl.SSLContext | None = None,
    seen: list[bytes] | None = None,
    accepted: Callable[[], None] = lambda: None,
) -> Iterator[int]:
    """The port, until the `with` ends. `context`: TLS; `seen`: each request's head, then
    b"closed" once the client closed its end; `accepted`: called on each connection before
    anything else (the TLS handshake)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def one(conn: socket.socket) -> None:
        try:
            accepted()
            if context is not None:
                conn = context.wrap_socket(conn, server_side=True)
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and (data := conn.recv(4096)):
                head += data
            if seen is not None:
                seen.append(head)
            serve(conn, stop)
            if seen is not None and conn.recv(1) == b"":
                seen.append(b"closed")
        except OSError:  # the client gave up
            pass
        finally:
            conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            thread = threading.Thread(target=one, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        listener.close()
        acceptor.join(30)
        for thread in threads:
            thread.join(15)


class Squatter:
    """A port check that names a squatter, and the `accepted` hook of serving() that tells
    it whether the connection was made when it was asked (over TLS the server holds its
    handshake until then, so a check made after the handshake would wait in vain)."""

    WHO = "127.0.0.1:8888 is held by pid 4242 (jupyter-lab) of user eve"

    def __init__(self) -> None:
        self._connected, self._asked = threading.Event(), threading.Event()
        self.asked_once_connected: list[bool] = []

    def accepted(self) -> None:
        self._connected.set()
        self._asked.wait(10)

    def __call__(self) -> str:
        self.asked_once_connected.append(self._connected.wait(5))
        self._asked.set()
        return self.WHO
