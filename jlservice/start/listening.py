"""JupyterLab's listening socket, made and held by jlservice ([kernels] survive_restarts).

It stays open across JupyterLab's restarts: a connection made while no JupyterLab runs
waits in its backlog and is served by the next one, instead of being refused. (JupyterLab's
front end reconnects a kernel's websocket at once when it closes; refused, it tries again
only after a random wait that grows: up to 1, 3, 7, 15 s…, or 10–30 s once its look-up of
the kernel is refused too.) Each JupyterLab is handed the socket — inherited by a
cold start, over SCM_RIGHTS by the warm parent — and its server extension (inlab/listening.py)
serves it instead of binding one itself.

It is made as tornado's bind_sockets makes JupyterLab's own (SO_REUSEADDR, IPV6_V6ONLY,
backlog 128; [lab] ip is always one address, so there is one socket), and it is owned by
the lab user, as a socket JupyterLab made would be: who listens is decided by the owner
(listener.stranger).
"""

from __future__ import annotations

import os
import socket

from jlservice import net
from jlservice.start.launcher import Launch

ENV = "JLSERVICE_LISTEN_FDS"  # the descriptors' numbers in JupyterLab, comma-separated
BACKLOG = 128  # tornado's, as JupyterLab listens


def bind(ip: str, port: int) -> list[socket.socket]:
    """Sockets listening on ip:port; raises errors.PortInUse or CannotStartNow."""
    found = socket.getaddrinfo(
        ip, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE | socket.AI_NUMERICHOST
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise net.cannot_listen(exc, ip, port) from None
            sock.listen(BACKLOG)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listens(sock: socket.socket) -> bool:
    """Still listening: JupyterLab (its user) shares it, and could shut it down."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    except OSError:
        return False


class Listening:
    """The sockets held for one address and lab user, until either changes or they are
    closed."""

    def __init__(self) -> None:
        self._key: tuple[str, int, int] | None = None
        self._sockets: list[socket.socket] = []

    def hold(self, launch: Launch) -> tuple[int, ...]:
        """The descriptors listening on `launch`'s address, owned by its user: the ones
        held, or new ones (bound now) for a new address. Raises errors.PortInUse or
        CannotStartNow.

        Another lab user gets new ones: the old one's processes may hold these still
        (JupyterLab's user can take its descriptors), and must not accept the new user's
        connections — holding the old socket, they hold the port, which is then waited for
        as any other program's.
        """
        key = (launch.ip, launch.port, launch.account.uid)
        if key != self._key or not all(map(_listens, self._sockets)):
            self.close()  # first: a new ip on the same port would collide with the old
            self._sockets = bind(launch.ip, launch.port)
            self._key = key
            if launch.switch_user:
                for sock in self._sockets:
                    os.fchown(sock.fileno(), launch.account.uid, launch.account.gid)
        return tuple(sock.fileno() for sock in self._sockets)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets, self._key = [], None


def environ(fds: tuple[int, ...]) -> dict[str, str]:
    """What tells JupyterLab which descriptors to serve (none: it binds itself)."""
    return {ENV: ",".join(map(str, fds))} if fds else {}
