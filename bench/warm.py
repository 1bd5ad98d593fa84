"""Warm-restart benchmark: how fast JupyterLab is back from the warm parent, and its cost.

    /opt/jlsvenv/bin/python bench/warm.py [--runs 10] [--json PATH]

Two `jlservice run` side by side on their own ports, one with [restart] warm = true and one
with warm = false, and a plain `jupyter-lab` cold start as the baseline, interleaved in every
run (after an untimed warm-up of each):

1. kill -9 JupyterLab -> GET /api answering 200 again, warm and cold; goal for warm: median
   <= 0.15 x the plain cold start. [restart] reset_after = 0, so every crash restarts at once.
2. a saved config with a new [lab] port -> the new port answering, warm and cold; goal for
   warm: median <= 0.3 x the plain cold start (debounce and the old server's shutdown
   included).
3. the warm parent's resident and unique memory (RSS, USS) after each run.

Every start jlservice made warm is checked in state.json (started_warm); one that fell
back to cold is reported as a warning. Every process started is ended by PID. Exit status 1
when something fails to start or answer, 3 with --strict when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a directory of scripts, not a package: its helpers are imported from beside it
from _common import (
    BenchError,
    Processes,
    exited,
    free_port,
    lab_bench_parser,
    parse_lab_bench,
    session,
    wait_for,
)
from _lab import Lab
from _report import Metric, announce, finish
from reload import Service

KILL_GOAL = 0.15  # warm kill -9 -> answering, as a ratio to a plain cold start
PORT_GOAL = 0.3  # warm port change -> new port answering, as a ratio


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def restart_section(warm: bool) -> str:
    return f"[restart]\nwarm = {'true' if warm else 'false'}\nreset_after = 0\n"


class Mode:
    """One supervisor, warm or cold, and its samples."""

    def __init__(self, work: Path, procs: Processes, args: argparse.Namespace, warm: bool):
        self.warm = warm
        self.name = "warm" if warm else "cold"
        (work / self.name).mkdir()
        self.lab = Lab.from_args(work / self.name, procs, args, work / self.name / "config")
        self.lab.extra_config = restart_section(warm)
        self.lab.config.write_text(self.lab.config_text())
        self.settle = args.settle
        self.service: Service | None = None
        self.kill_s: list[float] = []
        self.port_s: list[float] = []
        self.fell_back = 0

    def start(self, avoid: set[int]) -> None:
        self.service = Service(self.lab, self.settle)
        self.service.avoid |= avoid
        self.wait_warm_parent()

    def wait_warm_parent(self) -> dict[str, Any] | None:
        if not self.warm:
            return None
        return wait_for(
            lambda: (
                (self.lab.state().get("warm_parent") or {}).get("ready")
                and self.lab.state()["warm_parent"]
            ),
            120.0,
            "the warm parent to be ready",
            interval=0.05,
        )

    def check(self, what: str) -> None:
        started_warm = self.lab.state().get("started_warm")
        if started_warm != self.warm:
            self.fell_back += 1
            self.lab.warnings.append(f"{self.name} {what}: started_warm = {started_warm}")

    def kill(self) -> float:
        service = self.service
        assert service is not None
        old = service.state["lab_pid"]
        kill = time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: exited(old), 5.0, f"pid {old} to exit", interval=0.0002)
        answered = self.lab.wait_api(service.proc, service.log, f"{self.name} after kill -9")
        service.state = self.lab.wait_state_ready(service.proc, service.log, not_pid=old)
        self.lab.procs.adopt(service.state["lab_pid"])
        self.check("kill -9")
        self.wait_warm_parent()
        time.sleep(self.settle)
        return answered - kill

    def change_port(self) -> float:
        assert self.service is not None
        seconds = self.service.change_port()["api_s"]
        self.check("port change")
        self.wait_warm_parent()
        return seconds

    def stop(self) -> None:
        """SIGTERM; leftovers are checked once both supervisors are gone (they share
        one process registry)."""
        if self.service is not None:
            status = self.lab.procs.stop(self.service.proc)
            if status != 0:
                self.lab.warnings.append(f"{self.name}: jlservice run exited with {status}")


def measure(plain_lab: Lab, work: Path, procs: Processes, args: argparse.Namespace):
    """`plain_lab`: where the plain cold starts (the baseline) run."""
    plain_port = free_port()
    warm, cold = Mode(work, procs, args, True), Mode(work, procs, args, False)
    plain: list[float] = []
    rss: list[float] = []
    uss: list[float] = []
    try:
        say("starting both supervisors; warm-up (plain start, a kill and a port change each)")
        for mode in (warm, cold):
            mode.start({plain_port, warm.lab.port, cold.lab.port})
        plain_lab.plain_start(plain_port)
        for mode in (warm, cold):
            mode.kill()
            mode.change_port()
        warm.fell_back = cold.fell_back = 0
        del warm.lab.warnings[:], cold.lab.warnings[:]
        for i in range(args.runs):
            plain.append(plain_lab.plain_start(plain_port))
            for mode in (warm, cold):
                mode.kill_s.append(mode.kill())
                mode.port_s.append(mode.change_port())
            parent = psutil.Process(warm.lab.state()["warm_parent"]["pid"])
            memory = parent.memory_full_info()
            rss.append(memory.rss / 2**20)
            uss.append(memory.uss / 2**20)
            say(
                f"  run {i + 1}/{args.runs}: plain {plain[-1]:.3f} s; kill -9 -> answering: "
                f"warm {warm.kill_s[-1]:.3f} s, cold {cold.kill_s[-1]:.3f} s; port change: "
                f"warm {warm.port_s[-1]:.3f} s, cold {cold.port_s[-1]:.3f} s; warm parent "
                f"{rss[-1]:.1f} MiB RSS"
            )
    finally:
        for mode in (warm, cold):
            mode.stop()
        if left := procs.leftovers():
            plain_lab.warnings.append(f"pid(s) {left} still ran after both supervisors exited")
    warnings = [*plain_lab.warnings, *warm.lab.warnings, *cold.lab.warnings]
    base = "plain cold start"
    metrics = [
        Metric("cold start: plain jupyter-lab", "s", plain, note="spawn -> first 200 on /api"),
        Metric(
            "kill -9 -> /api 200: warm",
            "s",
            warm.kill_s,
            base,
            plain,
            KILL_GOAL,
            note=f"forked by the warm parent; fell back to cold: {warm.fell_back}",
        ),
        Metric("kill -9 -> /api 200: cold", "s", cold.kill_s, base, plain, note="warm = false"),
        Metric(
            "port change -> new port 200: warm",
            "s",
            warm.port_s,
            base,
            plain,
            PORT_GOAL,
            note="rename of the config -> first 200 on the new port (debounce 0.2 s and the "
            "old server's shutdown included)",
        ),
        Metric(
            "port change -> new port 200: cold", "s", cold.port_s, base, plain, note="warm = false"
        ),
        Metric("warm parent RSS", "MiB", rss, note="resident memory after each run"),
        Metric("warm parent USS", "MiB", uss, note="memory only it holds (not shared)"),
    ]
    raw = {"plain_s": plain, "warm": vars_of(warm), "cold": vars_of(cold)}
    return metrics, warnings, raw


def vars_of(mode: Mode) -> dict[str, Any]:
    return {"kill_s": mode.kill_s, "port_s": mode.port_s, "fell_back": mode.fell_back}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse_lab_bench(lab_bench_parser(__doc__, runs=10), argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.time()
    with session("bench/warm.py", args.keep) as (procs, work):
        try:
            (work / "plain").mkdir()
            plain = Lab.from_args(work / "plain", procs, args)
            title = "jlservice warm-restart benchmark"
            machine = announce(title, str(plain.bin / "python"), plain.env, args.runs)
            metrics, warnings, raw = measure(plain, work, procs, args)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            print(f"\nbench/warm.py: FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nbench/warm.py: interrupted", file=sys.stderr)
            return 130
    return finish("bench/warm.py", began, metrics, warnings, args, {"machine": machine, **raw})


if __name__ == "__main__":
    sys.exit(main())
