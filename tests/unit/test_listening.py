"""The listening socket jlservice holds for JupyterLab across its restarts (start/listening)."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
from helpers.procs import free_port

from jlservice import users
from jlservice.errors import PortInUse
from jlservice.start import listening, private_dir
from jlservice.start.cold import ColdStart
from jlservice.start.launcher import Launch


def launch(ip: str, port: int, keep: bool = True, uid: int | None = None) -> Launch:
    account = users.current()
    if uid is not None:  # another lab user (no switch: jlservice need not be root here)
        account = dataclasses.replace(account, uid=uid)
    return Launch(
        argv=("jupyter-lab",),
        env={},
        cwd="/",
        account=account,
        switch_user=False,
        umask=0o022,
        private_dir=Path("/nonexistent"),
        ip=ip,
        port=port,
        base_url="/",
        keep_kernels=keep,
    )


def inodes(fds: tuple[int, ...]) -> list[int]:
    return [os.fstat(fd).st_ino for fd in fds]


def connects(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as sock:
        return sock.connect_ex((ip, port)) == 0


def test_the_socket_is_held_while_the_address_stays_and_replaced_when_it_changes() -> None:
    held = listening.Listening()
    port = free_port()
    try:
        fds = held.hold(launch("127.0.0.1", port))
        assert len(fds) == 1 and connects("127.0.0.1", port)
        assert inodes(held.hold(launch("127.0.0.1", port))) == inodes(fds)  # never closed
        other = free_port()
        held.hold(launch("127.0.0.1", other))
        assert connects("127.0.0.1", other) and not connects("127.0.0.1", port)
    finally:
        held.close()
    assert not connects("127.0.0.1", other)


def test_another_lab_user_gets_a_new_socket() -> None:
    """The old user's processes may hold the old one: they must not answer the new user's
    connections."""
    held = listening.Listening()
    port = free_port()
    try:
        fds = held.hold(launch("127.0.0.1", port))
        first = inodes(fds)
        assert inodes(held.hold(launch("127.0.0.1", port, uid=os.getuid() + 1))) != first
    finally:
        held.close()


def test_one_that_stopped_listening_is_made_again() -> None:
    """JupyterLab shares it, and its user can shut it down: the next start must not get a
    socket that never accepts."""
    held = listening.Listening()
    port = free_port()
    try:
        (fd,) = held.hold(launch("127.0.0.1", port))
        socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_RDWR)
        assert not connects("127.0.0.1", port)
        held.hold(launch("127.0.0.1", port))
        assert connects("127.0.0.1", port)
    finally:
        held.close()


@pytest.mark.parametrize("ip", ["::1", "::"])
def test_ipv6_is_ipv6_only_as_jupyterlab_listens(ip: str) -> None:
    held = listening.Listening()
    try:
        (fd,) = held.hold(launch(ip, free_port()))
        sock = socket.socket(fileno=os.dup(fd))
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        sock.close()
    finally:
        held.close()


def test_a_port_another_program_holds_is_waited_for_naming_it() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(
            PortInUse, match=f"port {port} on 127.0.0.1 is in use by pid {os.getpid()}"
        ):
            listening.Listening().hold(launch("127.0.0.1", port))


def test_without_survive_restarts_jupyterlab_binds_it_and_none_is_held(monkeypatch) -> None:
    monkeypatch.setattr(private_dir, "prepare", lambda *a: None)
    cold = ColdStart(Path("/nonexistent"))
    port = free_port()
    try:
        assert cold.prepare(launch("127.0.0.1", port), ("t", b"c"))
        assert cold.prepare(launch("127.0.0.1", port, keep=False), ("t", b"c")) == ()
        assert not connects("127.0.0.1", port)  # closed, and free for JupyterLab
    finally:
        cold.close()


def test_the_descriptors_are_named_for_jupyterlab() -> None:
    assert listening.environ((5, 6)) == {"JLSERVICE_LISTEN_FDS": "5,6"}
    assert listening.environ(()) == {}
