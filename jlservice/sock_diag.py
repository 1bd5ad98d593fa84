"""The TCP sockets listening on a port, asked of the kernel over netlink (sock_diag).

The kernel walks only its table of listening sockets for this: /proc/net/tcp walks every
socket the machine has, TIME-WAIT ones included, and costs milliseconds of CPU on a busy
server (about 8 ms with 400 sockets here) for each health check and metrics round.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import NamedTuple

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_LISTEN = 10
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
# struct inet_diag_req_v2: family, protocol, ext, pad, states; then an inet_diag_sockid.
_REQUEST = struct.Struct("=BBBBI48x")
# struct inet_diag_msg: family, state, timer, retrans; sockid (sport, dport big-endian, src,
# dst, interface, cookie); expires, rqueue, wqueue, uid, inode.
_MESSAGE = struct.Struct("=BBBB2s2s16s16sI8sIIIII")
_ATTRIBUTE = struct.Struct("=HH")  # struct rtattr: length, type; then the value
_INET_DIAG_SKV6ONLY = 11  # u8, sent for every IPv6 socket
_MAX_DUMP = 1 << 20  # bytes of answers: thousands of listening sockets


class Socket(NamedTuple):
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    uid: int
    inode: int
    v6only: bool | None = None  # an IPv6 socket that takes no IPv4 connection; None: unknown


def listening(port: int) -> list[Socket]:
    """Raises OSError where netlink is not allowed (a sandbox) or not there."""
    found = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2.0)
        for family in (socket.AF_INET, socket.AF_INET6):
            found += _dump(sock, family, port)
    return found


def _dump(sock: socket.socket, family: int, port: int) -> list[Socket]:
    body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << _TCP_LISTEN)
    header = _HEADER.pack(
        _HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0
    )
    sock.sendto(header + body, (0, 0))
    found, received = [], 0
    while True:
        data = sock.recv(65536)
        received += len(data)
        if received > _MAX_DUMP:
            raise OSError(f"sock_diag: more than {_MAX_DUMP} bytes of listening sockets")
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
            body = offset + _HEADER.size
            if length < _HEADER.size:
                raise OSError("sock_diag: a malformed answer")
            if kind == _NLMSG_DONE:
                return found
            if kind == _NLMSG_ERROR:
                (errno,) = struct.unpack_from("=i", data, body)
                raise OSError(-errno, "sock_diag refused the request")
            end = min(offset + length, len(data))
            if kind == _SOCK_DIAG_BY_FAMILY and (listener := _parse(data, body, end, family, port)):
                found.append(listener)
            offset += (length + 3) & ~3  # NLMSG_ALIGN


def _parse(data: bytes, offset: int, end: int, family: int, port: int) -> Socket | None:
    if offset + _MESSAGE.size > end:
        raise OSError("sock_diag: a truncated answer")
    fields = _MESSAGE.unpack_from(data, offset)
    sport, src, uid, inode = fields[4], fields[6], fields[13], fields[14]
    if int.from_bytes(sport, "big") != port:
        return None
    if family == socket.AF_INET:
        return Socket(ipaddress.ip_address(src[:4]), uid, inode)
    v6only = _v6only(data, offset + _MESSAGE.size, end)
    return Socket(ipaddress.ip_address(src), uid, inode, v6only)


def _v6only(data: bytes, offset: int, end: int) -> bool | None:
    """The INET_DIAG_SKV6ONLY attribute among those after the message, if there."""
    while offset + _ATTRIBUTE.size <= end:
        length, kind = _ATTRIBUTE.unpack_from(data, offset)
        if length < _ATTRIBUTE.size:
            return None
        if kind == _INET_DIAG_SKV6ONLY and length > _ATTRIBUTE.size:
            return bool(data[offset + _ATTRIBUTE.size])
        offset += (length + 3) & ~3  # RTA_ALIGN
    return None
