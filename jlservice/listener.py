"""Who listens on a TCP port: a credential goes to an address only once the socket
listening there is known to be JupyterLab's.

sock_diag (or /proc/net/tcp{,6}, readable by anyone) gives each listening socket's owner
uid and inode;
/proc/PID/fd says which process holds an inode, but only to the process's own user or with
CAP_SYS_PTRACE, which the system unit does not keep. Where that is hidden, the uid decides:
any process of the lab user can read the token file anyway.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import sys
from collections.abc import Iterable, Iterator

from jlservice import sock_diag
from jlservice.net import reachable_host
from jlservice.sock_diag import Socket

_LISTEN = "0A"  # TCP_LISTEN in the st column


def listening(port: int) -> list[Socket]:
    """The sockets listening on TCP `port`, IPv4 and IPv6, in this network namespace: from
    the kernel over netlink, or from /proc/net/tcp{,6} where netlink is not allowed."""
    try:
        return sock_diag.listening(port)
    except OSError:
        return _listed(port)


def _listed(port: int) -> list[Socket]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:  # no IPv6 here
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == _LISTEN and int(hex_port, 16) == port:
                found.append(Socket(_address(address), int(fields[7]), int(fields[9])))
    return found


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # The kernel prints the address as 32-bit words, each in host byte order.
    words = (hex_address[i : i + 8] for i in range(0, len(hex_address), 8))
    return ipaddress.ip_address(b"".join(int(w, 16).to_bytes(4, sys.byteorder) for w in words))


def _reaches(sock: Socket, host: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a connection to `host` may land on `sock`."""
    if sock.ip.version == host.version:
        return sock.ip == host or sock.ip.is_unspecified
    # A dual-stack IPv6 socket takes IPv4 connections too; an IPv6-only one does not.
    if host.version != 4 or sock.v6only:
        return False
    return sock.ip.is_unspecified or sock.ip.ipv4_mapped == host


def stranger_to(launch, pid: int) -> str | None:
    """stranger() for the JupyterLab `pid` started as `launch` (a start.launcher.Launch)."""
    return stranger(launch.ip, launch.port, pid, launch.account.uid)


def stranger(ip: str, port: int, pid: int, uid: int) -> str | None:
    """Who, other than JupyterLab (`pid` or a process it started, running as `uid`), would
    answer a connection to the server listening on `ip`:`port`; None when nobody else would.
    """
    host = ipaddress.ip_address(reachable_host(ip))
    where = f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"
    sockets = [s for s in listening(port) if _reaches(s, host)]
    if any(s.ip.version == host.version for s in sockets):
        # Where /proc does not say which IPv6 socket is IPv6-only (netlink does: _reaches),
        # one beside these is: a dual-stack one cannot listen next to another user's IPv4
        # socket. It takes no IPv4 connection, and anyone may hold one.
        sockets = [s for s in sockets if s.ip.version == host.version or s.v6only is False]
    if not sockets:
        return f"nothing listens on {where}"
    foreign = [s for s in sockets if s.uid != uid]
    if not foreign:
        held = _held_by(pid, {s.inode for s in sockets})
        foreign = [s for s in sockets if held is not None and s.inode not in held]
    if foreign:
        return f"{where} is held by {describe(foreign[0])}, not by jlservice's JupyterLab"
    return None


def _held_by(pid: int, inodes: set[int]) -> set[int] | None:
    """Which of `inodes` `pid` or its descendants hold; None if their fds cannot be seen."""
    held = _socket_inodes(pid)
    if held is None:
        return None
    held &= inodes
    for child in _descendants(pid):
        if held == inodes:
            break
        held |= (_socket_inodes(child) or set()) & inodes
    return held


def _socket_inodes(pid: int) -> set[int] | None:
    """The sockets `pid` holds: {inode}; None if /proc does not show them to us."""
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except PermissionError:
        return None
    except OSError:  # gone
        return set()
    inodes = set()
    for name in names:
        try:
            target = os.readlink(f"{fds}/{name}")
        except PermissionError:
            return None
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _pids() -> Iterator[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child in _pids():
        try:
            with open(f"/proc/{child}/stat", "rb") as f:
                # The name, in parentheses, may hold anything, ")" included.
                parent = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        found.extend(kids := children.get(todo.pop(), []))
        todo.extend(kids)
    return found


def describe(sock: Socket) -> str:
    """Who holds `sock`: pid 1234 (name) of user bob, or a process of user bob when /proc
    hides which."""
    user = _user(sock.uid)
    pid = _holder(sock.inode, _pids())
    if pid is None:
        return f"a process of user {user}"
    return f"pid {pid} ({_name(pid)}) of user {user}"


def _holder(inode: int, pids: Iterable[int]) -> int | None:
    for pid in pids:
        if inode in (_socket_inodes(pid) or ()):
            return pid
    return None


def _name(pid: int) -> str:
    """The process's name, as it chose it (prctl PR_SET_NAME): escape it before showing it."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return os.fsdecode(f.read().removesuffix(b"\n"))
    except OSError:
        return "?"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
