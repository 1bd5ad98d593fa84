"""Shared helpers for the jlservice benchmarks.

Ports, readiness polling, processes (every one started is recorded by PID and ended, never
killed by name) and jlservice's JSON log events. Standard library and psutil only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

HOST = "127.0.0.1"
# Environment a child must not inherit from us: systemd's per-service settings, jlservice's.
PRIVATE_ENV = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JLSERVICE_CONFIG",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "JUPYTER_TOKEN",
    "JUPYTER_TOKEN_FILE",
    "JUPYTER_RUNTIME_DIR",
)


class BenchError(Exception):
    """Something the benchmark needs did not start or did not answer; str() says what."""


# ── ports and readiness ──────────────────────────────────────────────────────


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_bindable(port: int) -> bool:
    """Whether a server could listen on HOST:port now (SO_REUSEADDR, like tornado)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def wait_port_free(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_bindable(port):
        if time.monotonic() > deadline:
            raise BenchError(f"port {port} on {HOST} is still in use after {timeout:g} s")
        time.sleep(0.05)


def api_ok(port: int, path: str = "/api", timeout: float = 2.0) -> bool:
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


def wait_api(port: int, timeout: float, interval: float, alive: Callable[[], bool], what: str):
    """time.monotonic() of the first 200 on /api; polls every `interval` s plus the request.

    Raises BenchError when `alive()` turns false (the process died) or after `timeout` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        if api_ok(port):
            return time.monotonic()
        if not alive():
            raise BenchError(f"{what} exited before http://{HOST}:{port}/api answered")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: http://{HOST}:{port}/api did not answer in {timeout:g} s")
        time.sleep(interval)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def exited(pid: int) -> bool:
    """Whether process `pid` has finished exiting: gone, or a zombie with no thread left.

    (A thread-group leader shows as a zombie while its other threads still tear down.)
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                return False
        return os.listdir(f"/proc/{pid}/task") == [str(pid)]
    except (OSError, IndexError):
        return True


# ── processes ────────────────────────────────────────────────────────────────


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in PRIVATE_ENV}
    env.update(extra)
    return env


class Processes:
    """Every process the benchmark starts or learns about, so that all of them end."""

    def __init__(self) -> None:
        self._popens: list[subprocess.Popen[bytes]] = []
        self._adopted: list[psutil.Process] = []

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
        """Start `argv` in its own session, stdout and stderr appended to `log`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    env=dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us only; we end it ourselves
                )
            except OSError as exc:
                raise BenchError(f"cannot start {argv[0]}: {exc.strerror}") from None
        self._popens.append(proc)
        return proc

    def adopt(self, pid: int | None) -> None:
        """Also end `pid` (started by one of ours, e.g. JupyterLab) at clean-up."""
        if not pid:
            return
        with contextlib.suppress(psutil.Error):
            self._adopted.append(psutil.Process(pid))  # remembers its start time: no reuse

    def stop(self, proc: subprocess.Popen, timeout: float = 45.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; the exit status."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if proc in self._popens:
            self._popens.remove(proc)
        return proc.returncode

    def leftovers(self) -> list[int]:
        """Adopted processes still running (e.g. a JupyterLab its supervisor left behind)."""
        return [p.pid for p in self._adopted if _running(p)]

    def cleanup(self) -> list[int]:
        """End everything; returns the PIDs that had to be killed after their parent went."""
        for proc in list(self._popens):
            self.stop(proc, timeout=30.0)
        left = []
        for p in self._adopted:
            if _running(p):
                left.append(p.pid)
                with contextlib.suppress(psutil.Error):
                    p.kill()
        self._adopted.clear()
        return left


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_timed(argv: Sequence[str], env: Mapping[str, str]) -> tuple[float, str]:
    """Wall seconds of one run of `argv` to its exit, and its stdout. Raises if it fails."""
    start = time.monotonic()
    done = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} exited with status {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    return wall, done.stdout


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ── JSON log events ──────────────────────────────────────────────────────────


def log_events(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The JSON-lines events of a jlservice log from byte `offset` on (other lines skipped)."""
    with path.open("rb") as f:
        f.seek(offset)
        raw = f.read().decode("utf-8", "replace")
    events = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and "event" in event:
                events.append(event)
    return events


def event_time(event: Mapping[str, Any]) -> float:
    """Seconds since the epoch of a structlog ISO timestamp (local time unless it has a zone).

    A naive datetime's .timestamp() reads it as local time, as structlog wrote it, which
    makes it comparable with time.time().
    """
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


@contextlib.contextmanager
def session(script: str, keep: bool):
    """A work directory and the process registry of one benchmark run, cleaned up at the end
    (also on SIGTERM/SIGHUP); yields (procs, work)."""
    import shutil
    import sys
    import tempfile

    procs = Processes()
    name = Path(script).stem
    work = Path(tempfile.mkdtemp(prefix=f"jlservice-bench-{name}-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the finally below
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    try:
        yield procs, work
    finally:
        left = procs.cleanup()
        if left:
            print(f"{script}: had to kill leftover pids {left}", file=sys.stderr)
        if keep:
            print(f"work directory (logs): {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def lab_bench_parser(doc: str, runs: int) -> argparse.ArgumentParser:
    """The options of a benchmark that starts JupyterLab; add its own, then parse_lab_bench."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=runs, help=f"runs per figure (default {runs})")
    p.add_argument("--settle", type=float, default=1.0, help="wait after each (default 1 s)")
    p.add_argument("--poll-ms", type=float, default=5, help="/api poll interval (default 5)")
    p.add_argument("--start-timeout", type=float, default=180, help="seconds (default 180)")
    p.add_argument(
        "--bytecode",
        choices=("cached", "env"),
        default="cached",
        help="cached (default): children compile .pyc once into a private cache and then "
        "read it, as an installed package would; env: leave PYTHONDONTWRITEBYTECODE as it is",
    )
    p.add_argument("--bin-dir", default=str(Path(sys.executable).parent), help="venv bin/")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    return p


def parse_lab_bench(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be positive")
    if not 0 < args.poll_ms <= 10:
        p.error("--poll-ms must be above 0 and at most 10")
    for tool in ("jlservice", "jupyter-lab", "python"):
        if not (Path(args.bin_dir) / tool).exists():
            p.error(f"{args.bin_dir}/{tool} does not exist; pass --bin-dir (the venv's bin/)")
    return args
