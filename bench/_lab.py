"""Run JupyterLab the two ways the benchmarks compare: plain `jupyter-lab` and `jlservice run`.

Both use the same port, notebook directory and environment, and the same readiness poller.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, NamedTuple

import psutil
from _common import (
    HOST,
    BenchError,
    Processes,
    child_env,
    event_time,
    free_port,
    log_events,
    tail,
    wait_api,
    wait_for,
    wait_port_free,
)

PLAIN_TOKEN = "b" * 48  # the plain baseline's token: throw-away, 127.0.0.1 only
STUBBORN = "jlservice-bench-stubborn"


class Started(NamedTuple):
    """One `jlservice run` brought up; times in seconds from its spawn."""

    proc: subprocess.Popen
    log: Path
    state: dict[str, Any]
    api_s: float  # first 200 on /api (our poller)
    spawned_s: float  # lab_starting event: JupyterLab spawned
    declared_s: float  # lab_ready event: jlservice declares it ready


class Lab:
    """A work directory with a jlservice.toml, and the means to start JupyterLab in it."""

    def __init__(
        self,
        work: Path,
        procs: Processes,
        bin_dir: Path,
        poll: float,
        start_timeout: float,
        cached_bytecode: bool,
        config_dir: Path | None = None,
    ) -> None:
        """`config_dir`: where jlservice.toml lives (default `work`); it is created."""
        self.work = work
        self.procs = procs
        self.bin = bin_dir
        self.poll = poll
        self.start_timeout = start_timeout
        self.port = free_port()
        self.notebooks = work / "notebooks"
        self.notebooks.mkdir()
        self.state_dir = work / "state"
        self.runtime_dir = work / "run"
        self.config = (config_dir or work) / "jlservice.toml"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.logs = work / "logs"
        self.env = child_env()
        if cached_bytecode:  # as an installed package: compiled once, then read
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        self.warnings: list[str] = []
        self.extra_config = ""  # more TOML after the sections below, e.g. [restart]
        self._count = 0
        self._write_config()

    @classmethod
    def from_args(
        cls, work: Path, procs: Processes, args: Any, config_dir: Path | None = None
    ) -> Lab:
        """A Lab as the common options (_common.lab_bench_parser) ask for."""
        return cls(
            work,
            procs,
            Path(args.bin_dir),
            args.poll_ms / 1000,
            args.start_timeout,
            args.bytecode == "cached",
            config_dir,
        )

    def _write_config(self) -> None:
        self.config.write_text(self.config_text())

    def config_text(self, port: int | None = None, comment: str | None = None) -> str:
        """The jlservice.toml this Lab uses, on `port` (default self.port), with `comment`.

        Deterministic: two texts that differ only in `comment` configure the same launch.
        """
        return (
            (f"# {comment}\n" if comment else "") + "[lab]\n"
            f"port = {self.port if port is None else port}\n"
            f'ip = "{HOST}"\n'
            f"notebook_dir = {json.dumps(str(self.notebooks))}\n"
            f"allow_root = {'true' if os.geteuid() == 0 else 'false'}\n"
            "[service]\n"
            f"state_dir = {json.dumps(str(self.state_dir))}\n"
            f"runtime_dir = {json.dumps(str(self.runtime_dir))}\n"
            "[log]\n"
            'format = "json"\n' + self.extra_config
        )

    def add_stubborn_kernelspec(self) -> str:
        """A kernel that stays when JupyterLab dies (`sleep`, holding JupyterLab's stdout)."""
        path = self.work / "jupyter-path"
        spec = path / "kernels" / STUBBORN
        spec.mkdir(parents=True)
        argv = ["/bin/sh", "-c", "exec sleep 3600", "{connection_file}"]
        (spec / "kernel.json").write_text(
            json.dumps({"argv": argv, "display_name": STUBBORN, "language": "none"})
        )
        previous = self.env.get("JUPYTER_PATH")
        self.env["JUPYTER_PATH"] = str(path) + (os.pathsep + previous if previous else "")
        return STUBBORN

    def new_log(self, what: str) -> Path:
        self._count += 1
        return self.logs / f"{self._count:03d}-{what}.log"

    # ── plain jupyter-lab ───────────────────────────────────────────────────

    def plain_start(self, port: int | None = None) -> float:
        """Seconds from spawning plain jupyter-lab to the first 200 on /api; then stop it.

        On `port` (default self.port, e.g. another one while `jlservice run` holds that).
        The token goes in the environment, not on the command line (every user can read
        /proc/*/cmdline); for start-up time the two are the same.
        """
        port = self.port if port is None else port
        argv = [
            str(self.bin / "jupyter-lab"),
            *(["--allow-root"] if os.geteuid() == 0 else []),
            "--no-browser",
            f"--ServerApp.ip={HOST}",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.notebooks}",
        ]
        env = dict(
            self.env,
            JUPYTER_TOKEN=PLAIN_TOKEN,
            JUPYTER_RUNTIME_DIR=str(self.work / "plain-runtime"),
        )
        log = self.new_log("plain")
        wait_port_free(port)
        start = time.monotonic()
        proc = self.procs.spawn(argv, env, log)
        ready = self.wait_api(proc, log, "plain jupyter-lab", port)
        self.procs.stop(proc)
        return ready - start

    # ── jlservice run ───────────────────────────────────────────────────────

    def service_start(self) -> Started:
        """Spawn `jlservice run`; wait for /api and for state.json to say ready."""
        log = self.new_log("jlservice")
        wait_port_free(self.port)
        start_wall, start = time.time(), time.monotonic()
        proc = self.procs.spawn(
            [str(self.bin / "jlservice"), "run", "--config", str(self.config)], self.env, log
        )
        ready = self.wait_api(proc, log, "jlservice run")
        current = self.wait_state_ready(proc, log)
        self.procs.adopt(current["lab_pid"])
        spawned = wait_event(log, "lab_starting")
        declared = wait_event(log, "lab_ready")  # logged just after state.json says ready
        return Started(
            proc,
            log,
            current,
            api_s=ready - start,
            spawned_s=event_time(spawned) - start_wall,
            declared_s=event_time(declared) - start_wall,
        )

    def service_stop(self, proc: subprocess.Popen, log: Path) -> None:
        status = self.procs.stop(proc)
        if status != 0:
            self.warnings.append(f"jlservice run exited with status {status} on SIGTERM ({log})")
        left = self.procs.leftovers()
        if left:
            self.warnings.append(f"pid(s) {left} still ran after jlservice exited ({log})")
            self.procs.cleanup()

    def state(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.state_dir / "state.json").read_text())
        return {}

    def wait_state_ready(
        self, proc: subprocess.Popen, log: Path, not_pid: int | None = None
    ) -> dict[str, Any]:
        """state.json once it says ready for this supervisor (and a lab pid other than not_pid)."""

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise BenchError(f"jlservice run exited ({proc.returncode}):\n{tail(log)}")
            s = self.state()
            good = (
                s.get("status") == "ready"
                and s.get("supervisor_pid") == proc.pid
                and s.get("lab_pid") not in (None, not_pid)
            )
            return s if good else None

        return wait_for(ready, self.start_timeout, "state.json to say ready")

    def wait_api(
        self, proc: subprocess.Popen, log: Path, what: str, port: int | None = None
    ) -> float:
        """time.monotonic() of the first 200 on /api (of `port`, default self.port) while
        `proc` runs."""
        port = self.port if port is None else port
        try:
            return wait_api(port, self.start_timeout, self.poll, lambda: proc.poll() is None, what)
        except BenchError as exc:
            raise BenchError(f"{exc}\n--- last lines of {log} ---\n{tail(log)}") from None

    def start_kernel(self, token: str, lab_pid: int, name: str) -> int:
        """Start kernel `name` through the REST API; its pid (a child of JupyterLab)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        try:
            conn.request(
                "POST",
                "/api/kernels",
                body=json.dumps({"name": name}),
                headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 201:
            raise BenchError(f"starting a kernel: HTTP {response.status} {body[:200]!r}")
        lab = psutil.Process(lab_pid)
        kids = wait_for(lambda: lab.children(recursive=True), 30.0, "the kernel process")
        self.procs.adopt(kids[0].pid)
        return kids[0].pid


def first_event(events: list[dict[str, Any]], name: str, **match: Any) -> dict[str, Any] | None:
    """The first event called `name` whose fields equal `match`, or None."""
    for event in events:
        if event["event"] == name and all(event.get(k) == v for k, v in match.items()):
            return event
    return None


def need_event(events: list[dict[str, Any]], name: str, **match: Any) -> dict[str, Any]:
    event = first_event(events, name, **match)
    if event is None:
        raise BenchError(f"no {name} event {match or ''} in the jlservice log")
    return event


def wait_event(log: Path, name: str, offset: int = 0, **match: Any) -> dict[str, Any]:
    """The first `name` event (with `match`) in `log` from byte `offset`, once written."""
    return wait_for(
        lambda: first_event(log_events(log, offset), name, **match),
        10.0,
        f"a {name} event in {log}",
    )
