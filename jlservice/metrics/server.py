"""The exporter's HTTP server: a thread for each scrape, a few at a time, each request
bounded in time as a whole, and the bearer token checked on every request.

Every local account can connect to the port. A client that connects and sends nothing must
neither hold a thread of the root supervisor for long nor make it start threads without end.
"""

from __future__ import annotations

import hmac
import io
import selectors
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from jlservice import deadline, log

logger = log.get("jlservice.metrics")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

MAX_CLIENTS = 16  # at once; more are closed at once
CLIENT_TIMEOUT = 5.0  # seconds for a client's request, and for each write of the answer
_REFUSED = (
    b"401 Unauthorized: send the token of [metrics] bearer_token_file as "
    b"'Authorization: Bearer TOKEN'\n"
)


def guarded(app: WsgiApp, token: Callable[[], str]) -> WsgiApp:
    """`app` behind the bearer token `token()` returns now (none when it is empty)."""

    def guard(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        expected = token()
        if expected and not authorized(environ.get("HTTP_AUTHORIZATION", ""), expected):
            start_response(
                "401 Unauthorized",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("WWW-Authenticate", 'Bearer realm="jlservice metrics"'),
                ],
            )
            return [_REFUSED]
        return app(environ, start_response)

    return guard


def authorized(header: str, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, credentials = header.partition(" ")
    given = credentials.strip().encode("latin-1", "replace")  # WSGI decodes as latin-1
    return scheme.lower() == "bearer" and hmac.compare_digest(given, token.encode())


def serve(ip: str, port: int, app: WsgiApp) -> Serving:
    """Listen on ip:port (OSError if it cannot) and serve `app` from a daemon thread."""
    server = (_Server6 if ":" in ip else _Server)((ip, port), _Handler)
    server.set_app(app)
    return Serving(server)


class Serving:
    """A server's accept loop on a thread of its own until stop(). It sleeps until a client
    or stop() comes (socketserver's serve_forever wakes twice a second to look for a stop)."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._wake, self._waker = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="jlservice-metrics-http")
        self._thread.daemon = True
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._server, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            while all(key.fileobj is not self._wake for key, _ in selector.select()):
                self._server._handle_request_noblock()  # what serve_forever does for each

    def stop(self) -> None:
        """Stop accepting and close the port; scrapes under way finish on their threads."""
        self._waker.send(b"\0")
        self._thread.join(timeout=5)
        self._server.server_close()
        self._wake.close()
        self._waker.close()


class _Handler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT  # each write

    def setup(self) -> None:
        super().setup()
        # The request as a whole, not each read: a byte a second would hold the thread.
        raw = self.rfile.detach()
        self.rfile = io.BufferedReader(deadline.Reads(raw, self.connection, CLIENT_TIMEOUT))

    def parse_request(self) -> bool:
        read = super().parse_request()
        self.connection.settimeout(CLIENT_TIMEOUT)  # the request is in: each write its own
        return read

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape is noise


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 4 * MAX_CLIENTS  # a burst of connections waits for accept()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self._slots.acquire(blocking=False)  # False: closed without a thread

    def process_request(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it will not give its slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("metrics_client_dropped", client=str(client_address))  # timed out, gone


class _Server6(_Server):
    address_family = socket.AF_INET6
