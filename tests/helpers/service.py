"""Drive a real `jlservice run` (and the real JupyterLab it starts) from tests.

Every process a test starts is recorded by PID and ended in cleanup(); nothing is killed by name.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import secrets
import socket
import stat
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import websocket

from jlservice import procfs, users

from .procs import Processes, child_env, free_port, stop, wait_for

PYTHON = sys.executable
IS_ROOT = os.geteuid() == 0
# Tests that restart JupyterLab (or where the warm parent runs beside it) run twice, the
# restart forked from the warm parent and cold: each test so marked that starts a service
# (conftest.pytest_generate_tests). The first start is cold either way.
WARM_AND_COLD = pytest.mark.warm_and_cold
# Tests whose restarts or stop do not depend on the start strategy, or that see only the
# first (cold) start: run once, with the default [restart] warm = true and the warm parent
# waited for, so that what they check covers it too (without one, a subset of that).
WARM_ONLY = pytest.mark.parametrize("warm", [True], ids=["warm"], indirect=True)


# A network namespace with only its own loopback: there, 0.0.0.0 reaches nothing outside.
NETNS = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
        )
    return repr(value)


def render_toml(sections: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


# The one thing the tests change from jlservice's defaults (etc/jlservice.toml): the log is
# JSON lines at debug level, so that a test can wait for the events jlservice logs. A test
# that departs from any other default says why where it does.
TEST_SETTINGS: dict[str, dict[str, Any]] = {"log": {"format": "json", "level": "debug"}}


class Service:
    """One jlservice supervisor under test, with its own config, dirs and port: the
    deployment jlservice is for when `lab_user` is given (a root supervisor, JupyterLab as
    that unprivileged user, whose notebook dir it is)."""

    command: tuple[str, ...] = (PYTHON, "-m", "jlservice")  # how `jlservice` is run
    settings = TEST_SETTINGS  # the sections after [lab] and [service]
    new_session = False  # whether `jlservice run` gets a session of its own (Ctrl-C skips it)

    def __init__(
        self,
        tmp_path: Path,
        wait_warm: bool = False,
        *,
        config_path: Path | None = None,
        lab_user: users.Account | None = None,
        **sections: dict[str, Any],
    ) -> None:
        """`wait_warm`: being ready includes a warm parent ready to fork the next start, so
        that the restarts a test causes are warm ones. `config_path`: default
        tmp_path/jlservice.toml. `lab_user`: [lab] user, unless `sections` name another."""
        self.root = tmp_path
        self.wait_warm = wait_warm
        self.port = free_port()
        self.notebooks = tmp_path / "notebooks"
        self.notebooks.mkdir(exist_ok=True)
        self.state_dir = tmp_path / "state"
        self.config_path = config_path or tmp_path / "jlservice.toml"
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp_path / "jlservice.log"
        lab: dict[str, Any] = {"port": self.port, "notebook_dir": str(self.notebooks)}
        if lab_user is not None:
            lab["user"] = lab_user.name
        self.sections: dict[str, dict[str, Any]] = {
            "lab": lab,
            "service": {"state_dir": str(self.state_dir), "runtime_dir": str(tmp_path / "run")},
            **copy.deepcopy(self.settings),
        }
        for name, values in sections.items():
            self.sections.setdefault(name, {}).update(values)
        account = self.account
        if account is not None and IS_ROOT:  # the notebook dir is the lab user's, as installed
            os.chown(self.notebooks, account.uid, account.gid)
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] | None = None  # its processes' environment; None: ours
        self.procs = Processes()  # everything we saw, for cleanup
        self.write_config()

    @property
    def account(self) -> users.Account | None:
        """The account JupyterLab runs as ([lab] user, else whoever runs the tests)."""
        name = self.sections["lab"].get("user")
        return users.lookup(name) if isinstance(name, str) else users.current()

    # ── config and CLI ──────────────────────────────────────────────────────

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else render_toml(self.sections))

    def cli(self, *args: str, user: str | None = None, **kw: Any) -> subprocess.CompletedProcess:
        cmd = [*self.command, *args, "--config", str(self.config_path)]
        kw.setdefault("env", self.env)
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=240, user=user, cwd=self.root, **kw
        )

    # ── lifecycle ───────────────────────────────────────────────────────────

    def start(
        self,
        wait: bool = True,
        env: dict[str, str] | None = None,
        wrap: list[str] | None = None,
        output: int | None = None,
    ) -> Service:
        """Start `jlservice run`; `wrap`: a command that execs it (the pid stays the same);
        `output`: a file descriptor for its stdout and stderr instead of its log file."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*(wrap or []), *self.command, "run", "--config", str(self.config_path)],
                cwd=self.root,
                env=child_env(self.env, **(env or {})),
                stdout=log if output is None else output,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )
        self.procs.remember(self.proc.pid)
        if wait:
            self.wait_ready()
        return self

    def state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.state_dir / "state.json").read_text())
        except (FileNotFoundError, ValueError, RecursionError):  # not (re)written yet
            return {}
        self.procs.remember(data.get("lab_pid"))
        return data

    def wait_ready(self, not_pid: int | None = None, timeout: float = 90) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"jlservice exited with {self.proc.returncode}:\n" + self.log_text()[-3000:]
                )
            s = self.state()
            warm_ready = (s.get("warm_parent") or {}).get("ready") or not self.wait_warm
            if (
                s.get("status") == "ready"
                and (self.proc is None or s.get("supervisor_pid") == self.proc.pid)
                and s.get("lab_pid") not in (None, not_pid)
                and warm_ready
            ):
                return s
            return None

        try:
            state = wait_for(ready, timeout, "JupyterLab to be ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log ends:\n{self.log_text()[-3000:]}") from None
        self.snapshot()
        return state

    @property
    def lab_pid(self) -> int:
        return self.state()["lab_pid"]

    def snapshot(self) -> list[psutil.Process]:
        """Remember every descendant of the supervisor, for cleanup and for assertions."""
        if self.proc is None:
            return []
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.procs.remember(*(p.pid for p in procs))
        return procs

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_size(self) -> int:
        """Where the log ends now: log_events(offset) from here are what comes next."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_events(self, offset: int = 0) -> list[dict[str, Any]]:
        """The JSON lines of the log, from byte `offset` on."""
        raw = self.log_path.read_bytes()[offset:] if self.log_path.exists() else b""
        events = []
        for line in raw.decode(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def leftovers(self) -> list[int]:
        """PIDs we saw that still run (same pid and start time: not a reused pid)."""
        return self.procs.running()

    def cleanup(self) -> list[int]:
        """End the supervisor (SIGTERM; SIGKILL after its own [restart] stop_timeout, 20 s,
        and some) and kill what it left; their pids."""
        self.snapshot()
        if self.proc is not None:
            stop(self.proc, 30)
        return self.procs.kill()

    # ── talking to JupyterLab ───────────────────────────────────────────────

    @property
    def scheme(self) -> str:
        return "https" if self.sections.get("tls") else "http"

    @property
    def base(self) -> str:
        base_url = self.sections["lab"].get("base_url", "/").strip("/")
        return f"{self.scheme}://127.0.0.1:{self.port}/" + (base_url + "/" if base_url else "")

    def api(
        self,
        method: str,
        path: str,
        token: str | None = None,
        session: requests.Session | None = None,
        **kw: Any,
    ) -> requests.Response:
        return LabClient(self.base, self.verify).api(method, path, token, session, **kw)

    @property
    def verify(self) -> str | bool:
        """With https, trust exactly the configured certificate."""
        return self.sections["tls"]["certfile"] if self.scheme == "https" else True

    def use_certificate(self, *names: str, days: int = 365) -> None:
        """`jlservice cert` for `names` (this machine's name and 127.0.0.1 if none), and
        `sections`' [tls] set to it (write_config() writes it): the https helpers trust
        exactly that certificate."""
        args = [a for n in names for a in ("--hostname", n)]
        result = self.cli("cert", *args, "--days", str(days))
        assert result.returncode == 0, result.stderr
        self.sections["tls"] = {
            "certfile": str(self.state_dir / "tls.crt"),
            "keyfile": str(self.state_dir / "tls.key"),
        }

    def login(self, password: str, base: str | None = None) -> requests.Session:
        """Log in through JupyterLab's login form, as a browser does: GET /login sets the
        _xsrf cookie, POST /login sends it back with the password. The session then holds
        the login cookie (if the password was accepted)."""
        base = base or self.base
        session = requests.Session()
        # Per request: REQUESTS_CA_BUNDLE in the environment would override session.verify.
        kw = {"verify": self.sections["tls"]["certfile"]} if base.startswith("https:") else {}
        session.get(base + "login", timeout=30, **kw).raise_for_status()
        session.post(
            base + "login",
            data={"password": password, "_xsrf": session.cookies["_xsrf"]},
            allow_redirects=False,
            timeout=30,
            **kw,
        )
        return session

    def start_kernel(self, token: str, name: str = "python3") -> tuple[str, int]:
        """Start a kernel of kernelspec `name` over REST; returns its id and the pid of its
        process (the one whose command line names its connection file)."""
        response = self.api("POST", "api/kernels", token, json={"name": name})
        response.raise_for_status()
        kernel_id = response.json()["id"]

        def kernel_pid() -> int | None:
            for p in self.snapshot():
                with contextlib.suppress(psutil.Error):
                    if any(f"kernel-{kernel_id}.json" in a for a in p.cmdline()):
                        return p.pid
            return None

        return kernel_id, wait_for(kernel_pid, 30, "the kernel process")

    def open_terminal(self, token: str, command: str = "echo $$") -> tuple[str, str]:
        """Open a JupyterLab terminal and run `command` in its shell; returns the terminal's
        name and what the command printed (by default the shell's pid: JupyterLab may have
        other children, such as the node it runs at start to read yarn's config)."""
        name = self.api("POST", "api/terminals", token).json()["name"]
        url = self.base.replace("http", "ws", 1) + f"terminals/websocket/{name}?token={token}"
        ws = websocket.create_connection(url, timeout=30)
        try:
            marker = secrets.token_hex(4)
            ws.send(json.dumps(["stdin", f"echo {marker}-$({command})\r"]))
            out = ""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                kind, *data = json.loads(ws.recv())
                if kind == "stdout":
                    out += data[0]
                    for line in out.splitlines():
                        if line.startswith(f"{marker}-"):
                            return name, line[len(marker) + 1 :].strip()
            raise AssertionError(f"no answer from the terminal: {out!r}")
        finally:
            ws.close()

    def execute(
        self,
        token: str | None,
        kernel_id: str,
        code: str,
        timeout: float = 60,
        base: str | None = None,
        session: requests.Session | None = None,
    ) -> str:
        client = LabClient(self.base, self.verify)
        return client.execute(token, kernel_id, code, timeout, base, session)

    def channels(self, token: str, kernel_id: str, timeout: float) -> websocket.WebSocket:
        """A websocket to the kernel's channels, authenticated by `token`."""
        return LabClient(self.base, self.verify).channels(token, kernel_id, timeout)


class LabClient:
    """JupyterLab's REST API and a kernel's websocket, at `base` (http://HOST:PORT/BASE_URL/)."""

    def __init__(self, base: str, verify: str | bool = True) -> None:
        self.base = base
        self.verify = verify

    def api(
        self,
        method: str,
        path: str,
        token: str | None = None,
        session: requests.Session | None = None,
        **kw: Any,
    ) -> requests.Response:
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {token}"
        kw.setdefault("verify", self.verify)
        return (session or requests).request(
            method, self.base + path, headers=headers, timeout=30, **kw
        )

    def channels(
        self,
        token: str | None,
        kernel_id: str,
        timeout: float,
        base: str | None = None,
        session: requests.Session | None = None,
    ) -> websocket.WebSocket:
        """A websocket to the kernel's channels, authenticated by `token`, else by the login
        cookie of `session`; `base`: another way to the server (a proxy)."""
        url = (base or self.base).replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
        if token:
            header = [f"Authorization: token {token}"]
        else:
            assert session is not None
            header = ["Cookie: " + "; ".join(f"{c.name}={c.value}" for c in session.cookies)]
        return websocket.create_connection(url, header=header, timeout=timeout)

    def execute(
        self,
        token: str | None,
        kernel_id: str,
        code: str,
        timeout: float = 60,
        base: str | None = None,
        session: requests.Session | None = None,
    ) -> str:
        """Run `code` in the kernel over its websocket (`token`, `base`, `session`: as for
        channels()); returns what it printed and its result once the kernel has replied and
        is idle again. An error raises only then: after an error ipykernel answers 'aborted' to
        the requests queued before the end of its abort, which it queues before it reports
        idle; a next request sent on the error message itself (as after an interrupt) could be
        one of them."""
        ws = self.channels(token, kernel_id, timeout, base, session)
        try:
            request = execute_request(code)
            msg_id = request["header"]["msg_id"]
            ws.send(json.dumps(request))
            out: list[str] = []
            error: str | None = None
            reply: str | None = None
            idle = False
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not (idle and reply):
                msg = json.loads(ws.recv())
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "execute_result":
                    out.append(msg["content"]["data"]["text/plain"])
                elif msg["msg_type"] == "error":
                    error = "kernel error: " + "\n".join(msg["content"]["traceback"])
                elif msg["msg_type"] == "execute_reply":
                    reply = msg["content"]["status"]
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    idle = True
            if not (idle and reply):
                seen = f"reply {reply!r}, idle {idle}" + (f"; {error}" if error else "")
                raise AssertionError(f"kernel did not finish in time ({seen})")
            if error:
                raise AssertionError(error)
            if reply != "ok":
                raise AssertionError(f"kernel answered {reply!r} to {code!r}")
            return "".join(out)
        finally:
            ws.close()


def execute_request(code: str) -> dict[str, Any]:
    """A kernel's execute_request for `code` (its msg_id in its header)."""
    ids = {"msg_id": uuid.uuid4().hex, "session": uuid.uuid4().hex, "username": "test"}
    header = {**ids, "msg_type": "execute_request", "version": "5.3"}
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    content["user_expressions"] = {}
    return dict(header=header, parent_header={}, metadata={}, channel="shell", content=content)


def event_time(event: dict[str, Any]) -> float:
    """Seconds since the epoch of a log event's ISO timestamp (structlog writes local time:
    a naive datetime's .timestamp() reads it so), comparable with time.time()."""
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


def files_exposing(secret: str, roots: list[Path]) -> list[str]:
    """Files under `roots` that contain `secret` and that another user could read. Mounts
    below them are not entered: a test running meanwhile may have one that hangs."""
    exposed = []
    mounts = {str(point) for point, _, _ in procfs.mounts()}
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in mounts]
            for name in files:
                path = Path(dirpath) / name
                if not path.is_file():  # a FIFO another test made would block the read
                    continue
                with contextlib.suppress(OSError):
                    # Only regular files: another test's FIFO would block the read.
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    if secret.encode() in path.read_bytes() and _world_readable(path):
                        exposed.append(str(path))
    return exposed


def _world_readable(path: Path) -> bool:
    """Could a user who is neither owner nor in the group read `path`?"""
    if not path.stat().st_mode & 0o004:
        return False
    return all(p.stat().st_mode & 0o001 for p in path.parents)


SO_TIMESTAMP = getattr(socket, "SO_TIMESTAMP", 29)  # Linux; the control message has its number


class NotifySocket:
    """A fake systemd notification socket. Each message is kept with the time the kernel
    queued it (SO_TIMESTAMP, seconds since the epoch): when jlservice sent it, however late
    the test reads it, and comparable with the timestamps of jlservice's log."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def read_until(self, predicate, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data, ancillary, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(16) + socket.CMSG_SPACE(32)
                )
            except TimeoutError:
                break
            sent = time.time()
            for level, kind, payload in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMP):
                    seconds, micros = struct.unpack("qq", payload[:16])
                    sent = seconds + micros / 1e6
            text = data.decode()
            fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            self.messages.append((sent, fields))
            if predicate(fields):
                return fields
        raise AssertionError(f"no matching notification; got {self.messages}")

    def pings(self, since: float = 0.0) -> list[float]:
        """When each WATCHDOG=1 read so far was sent, from `since` (time.time(), not
        time.monotonic(): the stamps are the kernel's wall clock)."""
        return [t for t, m in self.messages if m.get("WATCHDOG") == "1" and t >= since]

    def close(self) -> None:
        self.sock.close()
