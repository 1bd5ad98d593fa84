"""Ask JupyterLab whether it serves: unauthenticated GET {base_url}api answers 200.

HTTP/1.0 on the loop's own streams, one connection per request: the whole exchange is
bounded by one timeout on the monotonic clock (tornado's client times requests by the wall
clock, and a clock stepped forward failed the probe in flight), and a request that runs out
of time closes its connection, however the server behaves. JupyterLab runs as the lab user,
who may make it answer anything: the answer's head and body are bounded, and one that is no
HTTP is a problem like any other.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
from typing import NamedTuple
from urllib.parse import urlsplit

from jlservice import bounded
from jlservice.deadline import within
from jlservice.localhttp import LOOPBACK_TLS, Stranger, vouch

MAX_HEAD = 64 << 10  # the status line and headers
MAX_BODY = 8 << 20  # api/kernels of thousands of kernels; whatever answers is not trusted
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[ \r]")
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,10})[ \t]*\r", re.IGNORECASE)


class _Failed(Exception):
    """No answer, or one that is not HTTP or more than this client reads; str() says
    which in a few words."""


class _Answer(NamedTuple):
    code: int
    body: bytes


async def _get(
    url: str,
    timeout: float,
    token: str | None = None,
    body: bool = True,
    stranger: Stranger | None = None,
) -> _Answer:
    """GET `url` within `timeout` seconds in all; `body`: read it too; `stranger`: as for
    localhttp.Request. _Failed says why there is no answer."""
    try:
        return await within(timeout, _exchange(url, token, body, stranger))
    except asyncio.TimeoutError:
        raise _Failed(f"{url}: no answer within {timeout:g} s") from None
    except ssl.SSLError as exc:  # its errno is OpenSSL's, not the system's
        raise _Failed(f"{url}: TLS: {exc.reason or exc}") from None
    except OSError as exc:  # asyncio's own words name the call, not the reason
        raise _Failed(f"{url}: {os.strerror(exc.errno) if exc.errno else exc}") from None
    except _Failed as exc:
        raise _Failed(f"{url}: {exc}") from None


async def _exchange(url: str, token: str | None, body: bool, stranger: Stranger | None) -> _Answer:
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    head = f"GET {parts.path or '/'}{query} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
    if token:
        if stranger is None:
            raise TypeError(f"{url}: a token goes only with a check of the port")
        head += f"Authorization: token {token}\r\n"
    request = (head + "\r\n").encode("ascii")  # the configuration's base_url is ASCII
    sock = await _connected(parts.hostname, parts.port)
    try:
        vouch(stranger)  # connected, before the TLS handshake (its other end may stall it)
        reader, writer = await asyncio.open_connection(
            sock=sock,
            # Over https the certificate is not checked: our own child on a loopback address,
            # whose certificate is made for the public name.
            ssl=LOOPBACK_TLS if parts.scheme == "https" else None,
            server_hostname=parts.hostname if parts.scheme == "https" else None,
            limit=MAX_HEAD,
        )
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(request)
        return await _read_answer(reader, body)
    finally:
        writer.transport.abort()  # read, or given up on: nothing is left to say


async def _connected(host: str | None, port: int | None) -> socket.socket:
    """A TCP connection to `host` (an IP address: [lab] ip is one) and `port`."""
    if host is None or port is None:
        raise _Failed("no host and port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _read_answer(reader: asyncio.StreamReader, body: bool) -> _Answer:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise _Failed(f"headers over {MAX_HEAD >> 10} KiB") from None
    except asyncio.IncompleteReadError:
        raise _Failed("the connection closed before the headers ended") from None
    status = _STATUS.match(head)
    if status is None:
        raise _Failed("the answer is not HTTP")
    code = int(status[1])
    if not body:
        return _Answer(code, b"")
    if (length := _LENGTH.search(head)) is not None:
        if int(length[1]) > MAX_BODY:
            raise _Failed(f"a body over {MAX_BODY >> 20} MiB")
        try:
            return _Answer(code, await reader.readexactly(int(length[1])))
        except asyncio.IncompleteReadError:
            raise _Failed("the connection closed before the body ended") from None
    content = bytearray()  # no length: an HTTP/1.0 answer ends where the connection does
    while chunk := await reader.read(MAX_BODY + 1 - len(content)):
        content += chunk
        if len(content) > MAX_BODY:
            raise _Failed(f"a body over {MAX_BODY >> 20} MiB")
    return _Answer(code, bytes(content))


async def api_problem(url: str, timeout: float) -> str | None:
    """None if GET `url` answers 200 within `timeout` seconds, else what went wrong."""
    try:
        answer = await _get(url, timeout, body=False)
    except _Failed as exc:
        return str(exc)
    return None if answer.code == 200 else f"{url} answered HTTP {answer.code}"


async def busy_kernels(url: str, token: str, timeout: float, stranger: Stranger) -> int | None:
    """How many kernels are executing code right now (GET api/kernels), or None if unknown:
    no answer, one that is not a list of kernels (the lab user can make it say anything), or
    a port another process holds (`stranger`: localhttp.Request's; the token is not sent)."""
    try:
        answer = await _get(url, timeout, token, stranger=stranger)
    except _Failed:
        return None
    if answer.code != 200:
        return None
    try:
        kernels = bounded.objects(bounded.loads(answer.body, MAX_BODY))
    except bounded.Malformed:
        return None
    return sum(1 for k in kernels if k.get("execution_state") == "busy")
