"""Root's HTTP to this machine's servers: the timeout given bounds the whole answer, and an
answer that is no HTTP is an error callers expect. The lab user's JupyterLab could otherwise
trickle its answer a byte at a time, each read well within any timeout, and hold root's
sampler, notices or doctor for as long as it likes; or answer garbage, which http.client
raises as neither an OSError nor a ValueError."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import urllib.request

import pytest
from helpers import tls_server
from helpers.played_server import Serve, Squatter
from helpers.played_server import answer as _answer
from helpers.played_server import serving as _serving

from jlservice import labapi, localhttp
from jlservice.admin.doctor import http as doctor_http

TRICKLE_S = 20  # how long a server trickles: a client bounded per read waits all of it


def _trickle(head: bytes) -> Serve:
    """`head` at once, then a byte each 0.05 s (under any one read's timeout)."""

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        ends = time.monotonic() + TRICKLE_S
        while not stop.is_set() and time.monotonic() < ends:
            conn.sendall(b"a")
            stop.wait(0.05)

    return serve


def _silent_after(head: bytes) -> Serve:
    def serve(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        stop.wait(TRICKLE_S)

    return serve


SLOW = {
    "headers trickled": _trickle(b"HTTP/1.1 200 OK\r\nX-Slow: "),
    "silence after the headers": _silent_after(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"),
    "a chunk trickled": _trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffff\r\n"),
}


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("how", list(SLOW))
def test_a_slow_answer_ends_at_the_timeout(how, scheme, tmp_path) -> None:
    context = tls_server.server_context(tmp_path) if scheme == "https" else None
    with _serving(SLOW[how], context) as port:
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/api")
        began = time.monotonic()
        with pytest.raises(TimeoutError), localhttp.OPENER.open(request, timeout=0.5) as answer:
            answer.read()
        assert time.monotonic() - began < TRICKLE_S / 4


def test_a_request_without_a_timeout_is_refused() -> None:
    served = _serving(_answer(b"HTTP/1.1 204 No Content\r\n\r\n"))
    with served as port, pytest.raises(ValueError, match="needs a timeout"):
        localhttp.OPENER.open(f"http://127.0.0.1:{port}/api")


GARBAGE = {
    "no status line": b"garbage\r\n\r\n",
    "a chunk size that is none": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "too many headers": b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n",
}


@pytest.mark.parametrize("how", list(GARBAGE))
def test_an_answer_that_is_no_http_is_no_answer_to_every_caller(how) -> None:
    with _serving(_answer(GARBAGE[how])) as port:
        # This process plays JupyterLab: the token may go to it.
        lab = labapi.Endpoint(f"http://127.0.0.1:{port}/api", "t", os.getpid(), os.geteuid(), "/")
        assert labapi.fetch(lab, 2) is None
        assert labapi.lab_version(lab, 2) is None
        assert labapi.shut_down_if_idle(lab, "k1", time.time(), 2) is False
        assert labapi.post_event(lab, {"x": 1}, 2) is False
        if how != "a chunk size that is none":  # the doctor reads no body
            status, why = doctor_http.get(f"http://127.0.0.1:{port}/api")
            assert status is None and why.startswith("not an HTTP answer"), why


SQUATTER = Squatter.WHO


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_who_holds_the_port_is_asked_once_connected_and_a_stranger_is_sent_nothing(
    scheme, tmp_path
) -> None:
    """Asked before connecting, the port could change hands in between (JupyterLab dies,
    another user's process binds the port) and the token go to that process."""
    context = tls_server.server_context(tmp_path) if scheme == "https" else None
    squatter = Squatter()
    seen: list[bytes] = []
    with _serving(_answer(b"HTTP/1.1 200 OK\r\n\r\n"), context, seen, squatter.accepted) as port:
        url = f"{scheme}://127.0.0.1:{port}/api"
        request = localhttp.Request(url, squatter, headers={"Authorization": "token secret"})
        with pytest.raises(localhttp.ERRORS, match="not sent: " + re.escape(SQUATTER)):
            localhttp.OPENER.open(request, timeout=5)
    assert squatter.asked_once_connected == [True]
    assert set(seen) <= {b"", b"closed"}  # not a byte of the request (over TLS: no handshake)


def test_a_credential_without_a_check_of_the_port_is_refused() -> None:
    """The rule is kept where every request passes: a caller that forgets the check fails
    at once, before connecting, rather than send the token to whoever holds the port; and
    not as an answer that did not come (localhttp.ERRORS), which callers take quietly."""
    seen: list[bytes] = []
    with _serving(_answer(b"HTTP/1.1 200 OK\r\n\r\n"), seen=seen) as port:
        url = f"http://127.0.0.1:{port}/api/status"
        bare = urllib.request.Request(url, headers={"Authorization": "token secret"})
        with pytest.raises(TypeError, match="a credential goes only with a check of the port"):
            localhttp.OPENER.open(bare, timeout=5)
        with pytest.raises(TypeError, match="a credential goes only with a check of the port"):
            doctor_http.get(url, "secret")
        with pytest.raises(localhttp.NotSent) as refused:
            doctor_http.get(url, "secret", stranger=lambda: SQUATTER)
        assert refused.value.who == SQUATTER
        assert doctor_http.get(url, "secret", stranger=lambda: None) == (200, "")
    heads = sorted(h for h in seen if h != b"closed")
    assert heads[0] == b"" and b"Authorization: token secret" in heads[1]  # refused; vouched
