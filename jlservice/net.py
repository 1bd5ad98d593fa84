"""Addresses: how to write one in a URL, how to reach a listener from this machine, and
whether a port is free (and who holds it if not)."""

from __future__ import annotations

import errno

from jlservice.errors import CannotStartNow, PortInUse

WILDCARDS = ("0.0.0.0", "::")


def is_wildcard(ip: str) -> bool:
    """Whether a listener on `ip` accepts connections on every address of the machine."""
    return ip in WILDCARDS


def bracket(host: str) -> str:
    """`host` as it stands in a URL or host:port: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def reachable_host(ip: str) -> str:
    """Where to reach a server listening on `ip` from this machine."""
    if ip == "0.0.0.0":
        return "127.0.0.1"
    if ip == "::":
        return "::1"
    return ip


def local_url(ip: str, port: int, path: str, scheme: str = "http") -> str:
    """The URL of `path` on a server listening on ip:port, as reached from this machine."""
    return f"{scheme}://{bracket(reachable_host(ip))}:{port}{path}"


def check_port(ip: str, port: int, key: str = "[lab] port") -> str | None:
    """Why a server could not listen on ip:port right now, or None (`key`: what to fix)."""
    try:
        require_free(ip, port, key)
    except CannotStartNow as exc:
        return str(exc)
    return None


def require_free(ip: str, port: int, key: str = "[lab] port") -> None:
    """Raises PortInUse, or CannotStartNow, if a server could not listen on ip:port now."""
    import socket  # not on `jlservice token`'s path, which needs the addresses alone

    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            raise cannot_listen(exc, ip, port, key) from None


def cannot_listen(exc: OSError, ip: str, port: int, key: str = "[lab] port") -> CannotStartNow:
    """What a failed bind to ip:port means: PortInUse (who holds it), or CannotStartNow."""
    if exc.errno == errno.EADDRINUSE:
        return PortInUse(f"port {port} on {ip} is in use{_holder(port)}; stop it or change {key}")
    if exc.errno == errno.EADDRNOTAVAIL:
        where = "[lab] ip" if key == "[lab] port" else key
        return CannotStartNow(f"{ip} is not an address of this machine; fix {where}")
    return CannotStartNow(f"cannot listen on {ip}:{port}: {exc.strerror}")


def _holder(port: int) -> str:
    """Who listens on `port`, as the end of "in use …": by pid 7 (name) of user bob."""
    from jlservice import listener

    sockets = listener.listening(port)
    return f" by {listener.describe(sockets[0])}" if sockets else ""
