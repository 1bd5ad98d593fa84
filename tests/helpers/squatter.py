"""A port squatter: another user's process that takes a port (as soon as it is free), names
itself as it likes (prctl PR_SET_NAME), answers every HTTP request 200 with `[]`, and records
what it was sent.

With SO_REUSEADDR it can also bind first and listen later: a check that binds the port (with
SO_REUSEADDR too) then still finds it free, and whoever listens first gets it."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import psutil

from helpers.procs import wait_for
from helpers.service import PYTHON, NotifySocket
from jlservice import users
from jlservice.config import RestartConfig
from jlservice.errors import PortInUse
from jlservice.supervisor import policy

_SCRIPT = r"""
import ctypes, json, os, socket, sys, time

ip, port, name, when = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3]), sys.argv[4]
name = name.replace(b"{pid}", str(os.getpid()).encode())  # its pid as its own namespace sees it
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name), 0, 0, 0)  # PR_SET_NAME
server = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
while True:
    try:
        server.bind((ip, port))
        break
    except OSError:
        time.sleep(0.005)
if when == "later":
    print(json.dumps({"bound": os.getpid()}), flush=True)
    sys.stdin.readline()
server.listen(64)
print(json.dumps({"listening": os.getpid()}), flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.settimeout(5)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
            print(json.dumps({"request": head.decode("latin-1")}), flush=True)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                b"Connection: close\r\n\r\n[]"
            )
        except OSError:
            pass
"""


def port_wait_steps(restart: RestartConfig) -> list[float]:
    """jlservice's waits for a port another program holds, up to the first of max_delay
    (with the defaults 0.5, 1, 2, 4, 8, 16, 30 s); every later one is max_delay again."""
    wait = policy.Waiting()
    steps: list[float] = []
    while not steps or steps[-1] < restart.max_delay:
        steps.append(wait.again(PortInUse("the holder"), restart)[0])
    return steps


def waits_announced(statuses: list[str]) -> list[float]:
    """The waits for the port that STATUS= lines announce ("… trying again in 2 s: …")."""
    found = (re.search(r"trying again in (\S+) s", s) for s in statuses)
    return [float(m[1]) for m in found if m]


class Squatter:
    """Start with start(); `name`: at most 15 bytes, where {pid} becomes its own pid;
    `listen_later`: bind, and listen only once listen() is called."""

    def __init__(
        self, record: Path, ip: str, port: int, name: bytes, listen_later: bool = False
    ) -> None:
        self.record = record
        when = "later" if listen_later else "now"
        self.argv = [PYTHON, "-c", _SCRIPT, ip, str(port), name.hex(), when]
        self.proc: subprocess.Popen[bytes] | None = None
        # What runs it (nsenter) and the squatter itself; psutil checks a pid is not reused.
        self.processes: list[psutil.Process] = []

    def start(self, account: users.Account, prefix: tuple[str, ...] = ()) -> Squatter:
        """Run it as `account`; `prefix`: a command that runs it elsewhere (nsenter …),
        which must then switch to the account itself."""
        identity = {"user": account.uid, "group": account.gid, "extra_groups": []}
        identity = {} if prefix else identity
        with self.record.open("ab") as out:
            self.proc = subprocess.Popen(
                [*prefix, *self.argv], stdout=out, stdin=subprocess.PIPE, cwd="/", **identity
            )
        self.processes.append(psutil.Process(self.proc.pid))
        return self

    def wait_bound(self, timeout: float = 30) -> int:
        """Its pid as it sees it (in a sandbox: the sandbox's pid namespace)."""
        return self._wait("bound", timeout)

    def listen(self) -> None:
        self.proc.stdin.write(b"listen\n")
        self.proc.stdin.flush()

    def wait_listening(self, timeout: float = 30) -> int:
        """Its pid as it sees it (in a sandbox: the sandbox's pid namespace)."""
        return self._wait("listening", timeout)

    def _wait(self, key: str, timeout: float) -> int:
        pid = wait_for(lambda: self._lines(key), timeout, f"the squatter: {key}")[0]
        with contextlib.suppress(psutil.Error):  # by now nsenter has started it
            self.processes += self.processes[0].children(recursive=True)
        return pid

    def requests(self) -> list[str]:
        """The head of every HTTP request it received."""
        return self._lines("request")

    def _lines(self, key: str) -> list:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [entry[key] for entry in map(json.loads, lines) if key in entry]

    def __enter__(self) -> Squatter:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):  # the squatter itself first
            with contextlib.suppress(psutil.Error):
                process.kill()
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(10)


class HeldPort:
    """A port another user's program holds (`squatter`, listening) while a service, with the
    default [restart], starts and waits for it: `hold()` lets it go, in a thread, once
    jlservice announces (on `notify`, the service's NOTIFY_SOCKET) a wait of max_delay: every
    wait up to there has been announced, and from then on each is the same max_delay and
    nothing counts them."""

    def __init__(self, squatter: Squatter, notify: NotifySocket) -> None:
        self.squatter = squatter
        self.notify = notify
        self.freed: float | None = None  # when it let go (time.time())
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def hold(self) -> HeldPort:
        self._thread.start()
        return self

    def released(self, timeout: float) -> float:
        """Once the squatter has let go: when it did; raises what went wrong before."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the port still held after {timeout} s"
        if self.error is not None:
            raise self.error
        assert self.freed is not None
        return self.freed

    def _hold(self) -> None:
        restart = RestartConfig()
        try:
            self.notify.read_until(
                lambda m: waits_announced([m.get("STATUS", "")]) == [restart.max_delay],
                timeout=sum(port_wait_steps(restart)) + 60,
            )
        except BaseException as exc:  # raised in the test, by released()
            self.error = exc
        finally:
            self.squatter.__exit__(None, None, None)
            self.freed = time.time()
