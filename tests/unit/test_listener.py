"""listener: who holds a port (netlink sock_diag, or /proc), and whether it is the JupyterLab we
started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from jlservice import listener, sock_diag

ME = os.getuid()
_HOLD = (
    "import os, socket, sys, time\n"
    "s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
    "s.bind((sys.argv[1], 0)); s.listen()\n"
    "print(s.getsockname()[1], os.getpid(), flush=True); time.sleep(60)"
)


@pytest.fixture
def held() -> Iterator[tuple[int, socket.socket]]:
    """A port this process listens on (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1], sock


@contextlib.contextmanager
def _holder(ip: str, detach: bool = False) -> Iterator[int]:
    """A process listening on ip:<free port>, which it yields; `detach`: started so that it
    is not our descendant."""
    argv = [sys.executable, "-c", _HOLD, ip]
    if detach:  # setsid's fork leaves it to init (or a subreaper), not to us
        argv = ["setsid", "--fork", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    port, pid = map(int, proc.stdout.readline().split())
    try:
        yield port
    finally:
        os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_the_listening_socket_of_this_process(held) -> None:
    port, _ = held
    (sock,) = listener.listening(port)
    assert (str(sock.ip), sock.uid) == ("127.0.0.1", ME)
    assert listener.stranger("127.0.0.1", port, os.getpid(), ME) is None
    assert listener.stranger("0.0.0.0", port, os.getpid(), ME) is None  # probed on 127.0.0.1


def test_another_uid_is_a_stranger_named_by_pid_and_name(held) -> None:
    port, _ = held
    problem = listener.stranger("127.0.0.1", port, os.getpid(), ME + 1)
    assert problem == (
        f"127.0.0.1:{port} is held by pid {os.getpid()} ({listener._name(os.getpid())}) of "
        f"user {listener._user(ME)}, not by jlservice's JupyterLab"
    )


def test_a_descendant_is_ours_any_other_process_is_not() -> None:
    with _holder("127.0.0.1") as port:
        assert listener.stranger("127.0.0.1", port, os.getpid(), ME) is None
    with _holder("127.0.0.1", detach=True) as port:
        problem = listener.stranger("127.0.0.1", port, os.getpid(), ME)
        assert problem is not None and "not by jlservice's JupyterLab" in problem


def test_a_dead_jupyterlab_holds_nothing(held) -> None:
    port, _ = held
    gone = subprocess.Popen(["true"])
    gone.wait()
    problem = listener.stranger("127.0.0.1", port, gone.pid, ME)
    assert problem is not None and problem.startswith(f"127.0.0.1:{port} is held by pid ")


def test_nothing_listens_on_another_address(held) -> None:
    port, _ = held
    assert listener.stranger("::1", port, os.getpid(), ME) == f"nothing listens on [::1]:{port}"


def test_a_dual_stack_socket_answers_ipv4_too() -> None:
    with _holder("::") as port:
        (sock,) = listener.listening(port)
        assert str(sock.ip) == "::"
        assert listener.stranger("127.0.0.1", port, os.getpid(), ME) is None
        assert listener.stranger("::", port, os.getpid(), ME) is None
        assert "is held by" in listener.stranger("0.0.0.0", port, os.getpid(), ME + 1)


@pytest.mark.parametrize("asked", ["netlink", "/proc"])
def test_an_ipv6_only_socket_beside_jupyterlabs_ipv4_one_is_no_stranger(
    held, asked, monkeypatch
) -> None:
    """Anyone may listen on [::]:PORT IPv6-only beside JupyterLab's 127.0.0.1:PORT; it takes
    no IPv4 connection, so it must not keep JupyterLab from counting as ready."""
    port, _ = held
    if asked == "/proc":  # which socket is IPv6-only is then not known, only inferred
        monkeypatch.setattr(sock_diag, "listening", _refused)
    script = (
        "import os, socket, sys, time\n"
        "s = socket.socket(socket.AF_INET6)\n"
        "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
        "s.bind(('::', int(sys.argv[1]))); s.listen()\n"
        "print(os.getpid(), flush=True); time.sleep(60)"
    )
    argv = ["setsid", "--fork", sys.executable, "-c", script, str(port)]  # not our descendant
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    try:
        assert {str(s.ip) for s in listener.listening(port)} == {"127.0.0.1", "::"}
        assert listener.stranger("127.0.0.1", port, os.getpid(), ME) is None
        assert "is held by" in listener.stranger("::1", port, os.getpid(), ME)
    finally:
        os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_a_process_name_is_read_as_it_is() -> None:
    script = (
        "import ctypes, sys, time\n"
        "ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b'\\nMAINPID=1\\n\\xff'), 0, 0, 0)\n"
        "print('named', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "named\n"
        assert listener._name(proc.pid) == "\nMAINPID=1\n\udcff"  # escaping is for who shows it
    finally:
        proc.kill()
        proc.wait()


# Bound to one IPv6 address, a socket is IPv6-only (the kernel sets it); /proc never says.
V6ONLY = {"127.0.0.1": None, "::1": True, "::": False}


@pytest.mark.parametrize("ip", list(V6ONLY))
def test_the_kernel_over_netlink_says_what_proc_net_tcp_says_and_which_is_ipv6_only(ip) -> None:
    with _holder(ip) as port:
        (from_netlink,) = sock_diag.listening(port)
        assert [from_netlink._replace(v6only=None)] == listener._listed(port)
        assert str(from_netlink.ip) == ip and from_netlink.inode > 0
        assert from_netlink.v6only is V6ONLY[ip]


def _refused(port: int):
    raise PermissionError(1, "Operation not permitted")


def test_where_netlink_is_not_allowed_proc_net_tcp_answers(held, monkeypatch) -> None:
    """A sandbox without AF_NETLINK (RestrictAddressFamilies) still tells who listens."""
    port, _ = held
    monkeypatch.setattr(sock_diag, "listening", _refused)
    (sock,) = listener.listening(port)
    assert (str(sock.ip), sock.uid) == ("127.0.0.1", ME)
