"""JupyterLab started the two ways the benchmarks compare: plain `jupyter-lab` and `jlservice
run` (the tests' Service, with jlservice's defaults), timed by the same /api poller."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from typing import Any, ClassVar, NamedTuple

from helpers.procs import stop, wait_for
from helpers.service import Service, event_time

from .session import BenchError, Session

HOST = "127.0.0.1"
PLAIN_TOKEN = "b" * 48  # the plain baseline's token: throw-away, 127.0.0.1 only


class Crash(NamedTuple):
    """One kill -9 of JupyterLab and jlservice bringing it back."""

    old_pid: int
    offset: int  # size of the log at the kill: later events are the restart's
    wall: float  # time.time() at the kill
    teardown_ms: float  # kill -> the OS has ended the process
    back_s: float  # kill -> /api answering again
    ready_s: float  # kill -> state.json says ready again (with a ready warm parent)


class Lab(Service):
    """A `jlservice run` with jlservice's defaults (and a JSON log to read events from)."""

    settings: ClassVar[dict[str, dict[str, Any]]] = {"log": {"format": "json"}}
    new_session = True  # Ctrl-C reaches the benchmark only; it ends what it started

    def __init__(
        self, session: Session, name: str = "lab", config_dir: str | None = None, **kw: Any
    ) -> None:
        """In work/`name`; `config_dir`: a directory (in work) of its own for jlservice.toml.
        `kw`: wait_warm, and sections over the defaults."""
        root = session.work / name
        root.mkdir(parents=True, exist_ok=True)
        config = session.work / config_dir / "jlservice.toml" if config_dir else None
        # As root (as the README's figures were measured): JupyterLab as root, said so.
        lab = {"ip": HOST, **({"allow_root": True} if os.geteuid() == 0 else {})}
        super().__init__(root, config_path=config, lab=lab, **kw)
        self.session = session
        self.bin = session.bin
        self.command = (str(self.bin / "jlservice"),)
        self.env = dict(session.env)
        self.current: dict[str, Any] = {}  # state.json when it last said ready
        session.labs.append(self)

    def warn(self, message: str) -> None:
        self.session.warnings.append(message)

    def plain_start(self, port: int | None = None) -> float:
        """Seconds from spawning plain jupyter-lab to the first 200 on /api; then stop it.

        On `port` (default ours, e.g. another one while `jlservice run` holds that). The
        token goes in the environment, not on the command line (every user can read
        /proc/*/cmdline); for start-up time the two are the same.
        """
        port = port or self.port
        argv = [
            str(self.bin / "jupyter-lab"),
            *(["--allow-root"] if os.geteuid() == 0 else []),
            "--no-browser",
            f"--ServerApp.ip={HOST}",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.notebooks}",
        ]
        runtime = str(self.root / "plain-run")
        env = dict(self.env, JUPYTER_TOKEN=PLAIN_TOKEN, JUPYTER_RUNTIME_DIR=runtime)
        wait_port_free(port)
        start = time.monotonic()
        proc = self.session.spawn(argv, self.root / "plain.log", env)
        ready = self.wait_api("plain jupyter-lab", port, proc)
        stop(proc, 45)
        return ready - start

    def timed_start(self) -> dict[str, float]:
        """Spawn `jlservice run`; wait for /api and for state.json to say ready. Seconds from
        the spawn to: the first 200 on /api (api_s), the lab_starting event (spawned_s:
        JupyterLab spawned), the lab_ready event (declared_s: jlservice declares it ready)."""
        wait_port_free(self.port)
        offset = self.log_size()
        start_wall, start = time.time(), time.monotonic()
        self.start(wait=False)
        ready = self.wait_api("jlservice run")
        self.wait_ready()
        spawned = self.wait_event("lab_starting", offset)
        declared = self.wait_event("lab_ready", offset)  # logged just after state.json says so
        return {
            "api_s": ready - start,
            "spawned_s": event_time(spawned) - start_wall,
            "declared_s": event_time(declared) - start_wall,
        }

    def shutdown(self) -> None:
        """SIGTERM `jlservice run`; a warning when it fails or leaves a process behind."""
        assert self.proc is not None
        self.snapshot()
        if status := stop(self.proc, 45):
            self.warn(f"jlservice run exited with status {status} on SIGTERM ({self.log_path})")
        if left := self.procs.kill():
            self.warn(f"pid(s) {left} still ran after jlservice exited ({self.log_path})")

    def wait_ready(self, not_pid: int | None = None, timeout: float | None = None):
        """state.json once ready (kept as `current`), within --start-timeout by default."""
        self.current = super().wait_ready(not_pid, timeout or self.session.args.start_timeout)
        return self.current

    def wait_api(self, what: str, port: int | None = None, proc: Any = None) -> float:
        """time.monotonic() of the first 200 on /api of `port` (default ours) while `proc`
        (default `jlservice run`) runs; polled every --poll-ms plus the request."""
        port, proc = port or self.port, proc or self.proc

        def answers() -> bool:
            if proc.poll() is not None:
                log = (self.log_path if proc is self.proc else self.root / "plain.log").read_text()
                lines = "\n".join(log.splitlines()[-15:])
                raise BenchError(f"{what} exited before /api answered; its log ends:\n{lines}")
            return http_ok(port)

        args = self.session.args
        wait_for(answers, args.start_timeout, f"{what} on port {port}", args.poll_ms / 1000)
        return time.monotonic()

    def crash(self) -> Crash:
        """SIGKILL JupyterLab; wait until the OS has ended it, /api answers and state.json
        says ready again."""
        old = self.current["lab_pid"]
        offset = self.log_size()
        kill_wall, kill = time.time(), time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: exited(old), 5.0, f"pid {old} to exit", interval=0.0002)
        teardown = time.monotonic()
        back = self.wait_api("jlservice run after kill -9")
        self.wait_ready(not_pid=old)
        ready = time.monotonic()
        return Crash(old, offset, kill_wall, (teardown - kill) * 1000, back - kill, ready - kill)

    def add_kernelspec(self, name: str, argv: list[str], language: str = "python") -> str:
        """A kernelspec `name` that runs `argv`, on this JupyterLab's JUPYTER_PATH; `name`."""
        spec = self.root / "jupyter-path" / "kernels" / name
        spec.mkdir(parents=True)
        kernel = {"argv": argv, "display_name": name, "language": language}
        (spec / "kernel.json").write_text(json.dumps(kernel))
        path = filter(None, [str(spec.parent.parent), self.env.get("JUPYTER_PATH")])
        self.env["JUPYTER_PATH"] = os.pathsep.join(path)
        return name

    def wait_event(self, name: str, offset: int = 0, **match: Any) -> dict[str, Any]:
        """The first `name` event (with `match`) in the log from byte `offset`, once written."""

        def found() -> dict[str, Any] | None:
            return first_event(self.log_events(offset), name, **match)

        return wait_for(found, 10.0, f"a {name} event in {self.log_path}", 0.01)


def http_ok(port: int, path: str = "/api", timeout: float = 2.0) -> bool:
    """Whether GET http://HOST:port{path} answers 200 (no token: /api is unauthenticated)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def wait_port_free(port: int, timeout: float = 30.0) -> None:
    """Until a server could listen on HOST:port (SO_REUSEADDR, like tornado)."""

    def bindable() -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
            return True

    wait_for(bindable, timeout, f"port {port} on {HOST} to be free")


def exited(pid: int) -> bool:
    """Whether process `pid` has finished exiting: gone, or a zombie with no thread left
    (a thread-group leader shows as a zombie while its other threads still tear down)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                return False
        return os.listdir(f"/proc/{pid}/task") == [str(pid)]
    except (OSError, IndexError):
        return True


def first_event(events: list[Any], name: str, **match: Any) -> dict[str, Any] | None:
    """The first event called `name` whose fields equal `match`, or None."""
    fields = {"event": name, **match}
    found = (e for e in events if isinstance(e, dict) and fields.items() <= e.items())
    return next(found, None)


def need_event(events: list[Any], name: str, **match: Any) -> dict[str, Any]:
    if (event := first_event(events, name, **match)) is None:
        raise BenchError(f"no {name} event {match or ''} in the jlservice log")
    return event
