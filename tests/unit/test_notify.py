"""notify: sd_notify datagrams to a socket we own, watchdog interval, silence elsewhere."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlservice.supervisor import notify


@pytest.fixture
def listener(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket standing in for systemd's notify socket."""
    path = str(short_dir / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.settimeout(2)
        yield sock, path
    finally:
        sock.close()


@pytest.fixture
def systemd(listener, monkeypatch) -> socket.socket:
    """The process environment of a Type=notify service whose socket is `listener`."""
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    return sock


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def assert_silent(sock: socket.socket) -> None:
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_ready_sends_ready_and_status(systemd: socket.socket) -> None:
    notifier = notify.Notifier()
    assert notifier.enabled
    notifier.ready("serving on http://127.0.0.1:8888/")
    assert receive(systemd) == "READY=1\nSTATUS=serving on http://127.0.0.1:8888/"


def test_reloading_sends_monotonic_usec(systemd: socket.socket) -> None:
    notifier = notify.Notifier()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = receive(systemd).split("\n")
    assert lines[0] == "RELOADING=1"
    name, _, value = lines[1].partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert len(lines) == 2


def test_stopping_status_and_watchdog(systemd: socket.socket) -> None:
    notifier = notify.Notifier()
    notifier.stopping("stopping on SIGTERM")
    assert receive(systemd) == "STOPPING=1\nSTATUS=stopping on SIGTERM"
    notifier.status("restarting in 2 s")
    assert receive(systemd) == "STATUS=restarting in 2 s"
    notifier.watchdog()
    assert receive(systemd) == "WATCHDOG=1"


def test_abstract_socket(monkeypatch) -> None:
    name = f"jls-unit-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notify.Notifier().ready("x")
        assert receive(sock) == "READY=1\nSTATUS=x"


def test_without_notify_socket_nothing_fails(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = notify.Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.reloading()
    notifier.stopping("x")
    notifier.status("x")
    notifier.watchdog()


def test_dead_notify_socket_does_not_fail(short_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "gone"))
    notifier = notify.Notifier()
    notifier.ready("x")
    notifier.watchdog()


# --- watchdog ----------------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert notify.watchdog_interval(environ) == pytest.approx(15.0)


def test_watchdog_interval_without_pid() -> None:
    assert notify.watchdog_interval({"WATCHDOG_USEC": "5000000"}) == 2.5


def test_watchdog_meant_for_another_process() -> None:
    environ = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert notify.watchdog_interval(environ) is None


@pytest.mark.parametrize("usec", ["", "0", "-5", "abc", "1.5"])
def test_no_watchdog(usec: str) -> None:
    environ = {"WATCHDOG_USEC": usec} if usec else {}
    assert notify.watchdog_interval(environ) is None


def test_status_text_is_sent_as_utf8(systemd: socket.socket) -> None:
    notify.Notifier().status("port 8888–8890 in /srv/notebooks/café …")
    assert systemd.recv(4096) == "STATUS=port 8888–8890 in /srv/notebooks/café …".encode()


def test_last_words_wait_until_systemd_has_read_them(systemd: socket.socket) -> None:
    import array
    import threading

    received: list[str] = []

    def systemd_side() -> None:
        received.append(receive(systemd))
        fds = array.array("i")
        msg, ancdata, _, _ = systemd.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
        received.append(msg.decode())
        fds.frombytes(ancdata[0][2][: fds.itemsize])
        time.sleep(0.3)  # "processing"; last_words must not return before the fd is closed
        received.append("closed")
        os.close(fds[0])

    thread = threading.Thread(target=systemd_side)
    thread.start()
    notify.Notifier().last_words("configuration error: [lab] port: …")
    assert received == ["STATUS=configuration error: [lab] port: …", "BARRIER=1", "closed"]
    thread.join()


def test_last_words_give_up_when_systemd_never_answers(systemd: socket.socket) -> None:
    started = time.monotonic()
    notify.Notifier().last_words("bye", timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 2


# --- what a process name or JupyterLab's output can put into a field ---------------------


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        ("\nMAINPID=4242\n", "\\nMAINPID=4242\\n"),
        ("\rMAINPID=4242", "\\rMAINPID=4242"),  # systemd splits at CR too
        ("x\x00MAINPID=4242", "x\\x00MAINPID=4242"),
        ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
        ("\x9b31m\u2028WATCHDOG=1", "\\x9b31m\\u2028WATCHDOG=1"),
        ("\u202etxt.exe", "\\u202etxt.exe"),
    ],
)
def test_a_field_cannot_add_a_field(systemd: socket.socket, hostile: str, shown: str) -> None:
    notify.Notifier().ready(f"port 8888 is in use by pid 7 ({hostile})")
    message = receive(systemd)
    sent = shown.replace("\\", "\\\\")  # systemd drops one backslash of each pair
    assert message.split("\n") == ["READY=1", f"STATUS=port 8888 is in use by pid 7 ({sent})"]


def test_a_backslash_reaches_systemd_as_itself(systemd: socket.socket) -> None:
    notify.Notifier().status("C:\\temp\\n is not a path here")
    assert receive(systemd) == "STATUS=C:\\\\temp\\\\n is not a path here"


def test_undecodable_bytes_of_a_process_name_are_sent_escaped(systemd: socket.socket) -> None:
    # psutil and os.fsdecode hand an invalid UTF-8 byte over as a lone surrogate, which
    # cannot be encoded at all: the notifier must neither raise nor drop the message.
    notify.Notifier().status("held by pid 7 (\udcff\udc80)")
    assert systemd.recv(4096) == b"STATUS=held by pid 7 (\\\\xff\\\\x80)"


def test_a_long_status_is_cut_so_systemd_still_reads_ready(systemd: socket.socket) -> None:
    # JupyterLab's last line before it died (up to 64 KiB) goes into STATUS=; systemd drops a
    # datagram over 4096 bytes whole, and with it the READY=1 that ends a reload.
    notify.Notifier().ready("Reloaded, but JupyterLab failed to start: " + "é" * 65536)
    data = systemd.recv(65536 * 4)
    assert len(data) <= 4096
    lines = data.decode().split("\n")
    assert lines[0] == "READY=1"
    assert lines[1].startswith("STATUS=Reloaded, but JupyterLab failed to start: éé")
    assert lines[1].endswith("…") and len(lines) == 2
