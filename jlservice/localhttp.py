"""How root speaks HTTP to this machine's own servers (JupyterLab, jlservice's exporter).

JupyterLab runs as the lab user, who may make it answer anything: so never through an
http_proxy from the environment, over TLS without checking JupyterLab's certificate (it is
our own child, reached on loopback, and its names need not include the address used here),
and never following a redirect: urllib would follow one anywhere, with the token, after
reading the whole body first. A redirect is an HTTPError of its 3xx status instead.

OPENER.open needs a timeout. It bounds the connection, the TLS handshake (Python's ssl gives
the whole handshake one deadline) and the request each, and the answer — its status line,
headers and body — as a whole, not each read: one byte a second would otherwise hold the
caller for as long as the server likes (http.client reads up to a hundred 64 KiB header
lines). An answer that is no HTTP raises http.client.HTTPException: ERRORS is everything an
answer may raise.

A credential (an Authorization header) goes only in a `Request` with `stranger`: asked once
the TCP connection is made, before the TLS handshake and before a byte is sent, it names who
other than the server meant holds the port, and then nothing is sent (NotSent). Asked any
earlier, the port could change hands in between: JupyterLab dies, another local user's
process binds the port, and the token goes to it.
"""

from __future__ import annotations

import functools
import http.client
import io
import numbers
import socket
import ssl
import urllib.request
from collections.abc import Callable
from typing import Any

from jlservice import deadline

ERRORS = (OSError, ValueError, http.client.HTTPException)


class _Response(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(sock, *args, **kw)
        # Made right after the request was sent: the socket's timeout is the one given
        # (_checked made sure there is one).
        seconds = float(sock.gettimeout())  # type: ignore[arg-type]
        raw = self.fp.detach()  # nothing read yet; detached, its buffer does not close it
        self.fp = io.BufferedReader(deadline.Reads(raw, sock, seconds))


Stranger = Callable[[], str | None]  # who other than the server meant holds the port, or None


class NotSent(PermissionError):
    """Connected to someone other than the server meant: the request was not sent."""

    def __init__(self, who: str) -> None:
        super().__init__(f"not sent: {who}")
        self.who = who


class Request(urllib.request.Request):
    """A urllib Request with `stranger`: who other than the server meant holds the port
    (None: nobody), asked once connected; needed for a request with a credential."""

    def __init__(self, url: str, stranger: Stranger | None = None, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.stranger = stranger


def vouch(stranger: Stranger | None) -> None:
    """Raise NotSent if `stranger()` names someone."""
    if stranger is not None and (who := stranger()) is not None:
        raise NotSent(who)


class _Connection(http.client.HTTPConnection):
    """Asks the request's `stranger` once the TCP connection is made, before anything else
    (over TLS, the handshake: its other end may make it last)."""

    response_class = _Response

    def __init__(self, *args: Any, stranger: Stranger | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.stranger = stranger

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP only, also for _TLSConnection
        vouch(self.stranger)
        self._secure()

    def _secure(self) -> None:
        pass


class _TLSConnection(_Connection, http.client.HTTPSConnection):
    def _secure(self) -> None:
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def _checked(req: urllib.request.Request) -> urllib.request.Request:
    if not isinstance(req.timeout, numbers.Real):  # urllib's default: none at all
        raise ValueError(f"{req.full_url}: root's HTTP to a local server needs a timeout")
    if req.has_header("Authorization") and getattr(req, "stranger", None) is None:
        # Not in ERRORS: a caller's mistake must not pass for a server that did not answer.
        raise TypeError(f"{req.full_url}: a credential goes only with a check of the port")
    return req


def _vouched(connection: type, req: urllib.request.Request) -> Callable[..., Any]:
    return functools.partial(connection, stranger=getattr(req, "stranger", None))


class _HTTP(urllib.request.HTTPHandler):
    def http_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(_vouched(_Connection, req), _checked(req))


class _HTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req):  # type: ignore[no-untyped-def]
        connection = _vouched(_TLSConnection, req)
        return self.do_open(connection, _checked(req), context=self._context)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def _loopback_tls() -> ssl.SSLContext:
    """TLS to our own child on a loopback address, whose certificate (made for the public
    name) is not checked: so the CA store is never read, which costs ~30 ms of CPU."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


LOOPBACK_TLS = _loopback_tls()  # shared by every call (asyncio's too: supervisor/probe.py)
OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}), _HTTP(), _HTTPS(context=LOOPBACK_TLS), _NoRedirect()
)
