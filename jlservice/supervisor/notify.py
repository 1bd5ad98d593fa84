"""sd_notify(3) messages to systemd; silent no-ops when not started by systemd."""

from __future__ import annotations

import array
import os
import select
import socket
import time
from collections.abc import Mapping

import sdnotify

from jlservice.text import escape_controls

# systemd reads at most PIPE_BUF (4096) bytes of a datagram and drops a longer one whole,
# READY=1 with it; a STATUS= this long leaves room for the other fields.
MAX_VALUE_BYTES = 2048


def field(key: str, value: str) -> str:
    """One KEY=value line of a notification: whatever `value` holds (a process name, the
    last line JupyterLab printed) cannot end the line and add a field of its own, such as
    MAINPID=, which systemd would believe coming from the main process."""
    # systemd reads a backslash as escaping the next character, and drops it: doubled, the
    # backslash of an escape (or of the text) shows in `systemctl status` as itself.
    data = escape_controls(value).replace("\\", "\\\\").encode()
    if len(data) > MAX_VALUE_BYTES:
        value = data[: MAX_VALUE_BYTES - 3].decode(errors="ignore") + "…"
    else:
        value = data.decode()
    return f"{key}={value}"


class Notifier:
    def __init__(self) -> None:
        # sdnotify reads NOTIFY_SOCKET from the process environment itself.
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None
        self.watchdog_interval = watchdog_interval(os.environ)

    def _send(self, **fields: str) -> None:
        if self._sd is not None:
            message = "\n".join(field(key, value) for key, value in fields.items())
            # sdnotify encodes as Latin-1 and silently drops what does not fit (a "–" in an
            # error, a non-ASCII path); systemd reads UTF-8, so hand it UTF-8 bytes that way.
            self._sd.notify(message.encode().decode("latin-1"))

    def ready(self, status: str) -> None:
        self._send(READY="1", STATUS=status)

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(RELOADING="1", MONOTONIC_USEC=str(usec))

    def stopping(self, status: str) -> None:
        self._send(STOPPING="1", STATUS=status)

    def status(self, status: str) -> None:
        self._send(STATUS=status)

    def watchdog(self) -> None:
        self._send(WATCHDOG="1")

    def last_words(self, status: str, timeout: float = 5.0) -> None:
        """STATUS= right before exiting, and wait until systemd has read it."""
        self.status(status)
        self.barrier(timeout)

    def barrier(self, timeout: float = 5.0) -> None:
        """Wait until systemd has processed what was sent (sd_notify_barrier(3)); before an
        exit, or systemd may see the exit first and drop messages of a PID it forgot."""
        if self._sd is None:
            return
        address = os.environ["NOTIFY_SOCKET"]
        if address.startswith("@"):
            address = "\0" + address[1:]
        done, handed_over = os.pipe()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                fds = array.array("i", [handed_over])
                sock.sendmsg(
                    [b"BARRIER=1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], 0, address
                )
            os.close(handed_over)
            handed_over = -1
            # systemd closes its copy once it has processed everything sent before.
            select.select([done], [], [], timeout)
        except OSError:
            pass  # no systemd listening: nothing to wait for
        finally:
            os.close(done)
            if handed_over >= 0:
                os.close(handed_over)


def watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
