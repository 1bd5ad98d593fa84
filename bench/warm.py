"""Warm-restart benchmark: how fast JupyterLab is back from the warm parent, and its cost.

    python -m bench.warm [--runs 10] [--json PATH]

A warm and a cold `jlservice run` side by side, and a plain `jupyter-lab` cold start as the
baseline: kill -9 JupyterLab -> answering again; a port change -> the new port answering;
kill -9 right after a first start, while the warm parent imports; the warm parent's memory.
How each is measured: bench/README.md.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import psutil
from helpers.procs import free_port

from .lab import Lab
from .reload import change_port
from .report import Metric, say
from .session import Session, options, parse, run

KILL_GOAL = 0.15  # warm kill -9 -> answering, as a ratio to a plain cold start
PORT_GOAL = 0.3  # warm port change -> new port answering, as a ratio
EARLY_GOAL = 1.0  # kill -9 while the warm parent still imports: never slower than cold


class Mode:
    """One supervisor, warm or cold (ready includes a ready warm parent), and its samples."""

    def __init__(self, session: Session, warm: bool) -> None:
        self.warm = warm
        self.name = "warm" if warm else "cold"
        self.lab = Lab(
            session, self.name, f"{self.name}/config", wait_warm=warm, restart={"warm": warm}
        )
        self.settle = session.args.settle
        self.kill_s: list[float] = []
        self.port_s: list[float] = []
        self.fell_back = 0

    def check(self, what: str) -> None:
        started_warm = self.lab.state().get("started_warm")
        if started_warm != self.warm:
            self.fell_back += 1
            self.lab.warn(f"{self.name} {what}: started_warm = {started_warm}")

    def kill(self) -> float:
        seconds = self.lab.crash().back_s
        self.check("kill -9")
        time.sleep(self.settle)
        return seconds

    def change_port(self, avoid: set[int]) -> float:
        seconds = change_port(self.lab, avoid, self.settle)["api_s"]
        self.check("port change")
        return seconds

    def samples(self) -> dict[str, Any]:
        return {"kill_s": self.kill_s, "port_s": self.port_s, "fell_back": self.fell_back}


def early_crash(lab: Lab) -> tuple[float, bool]:
    """A fresh `jlservice run` (defaults), a kernel and a terminal opened as soon as it is
    ready, then kill -9 of JupyterLab while the warm parent it made still imports: seconds
    to answering again, and whether that start was warm."""
    lab.timed_start()
    token = lab.current["token"]
    lab.start_kernel(token, "python3")
    lab.api("POST", "api/terminals", token).raise_for_status()
    importing = lab.state().get("warm_parent")
    if importing is None or importing["ready"]:
        lab.warn(f"early crash: the warm parent was not importing ({importing})")
    seconds = lab.crash().back_s
    warm = lab.state().get("started_warm") is True
    lab.shutdown()
    return seconds, warm


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    runs = session.args.runs
    plain_lab = Lab(session, "plain")  # where the plain cold starts (the baseline) run
    plain_port = free_port()
    warm, cold = Mode(session, True), Mode(session, False)
    avoid = {plain_port, warm.lab.port, cold.lab.port}
    early_lab = Lab(session, "early")
    plain: list[float] = []
    early: list[float] = []
    early_warm = 0
    rss: list[float] = []
    uss: list[float] = []
    say("starting both supervisors; warm-up (plain start, a kill and a port change each)")
    for mode in (warm, cold):
        mode.lab.timed_start()
        time.sleep(mode.settle)
    plain_lab.plain_start(plain_port)
    for mode in (warm, cold):
        mode.kill()
        mode.change_port(avoid)
    warm.fell_back = cold.fell_back = 0
    session.warnings.clear()
    for i in range(runs):
        plain.append(plain_lab.plain_start(plain_port))
        for mode in (warm, cold):
            mode.kill_s.append(mode.kill())
            mode.port_s.append(mode.change_port(avoid))
        seconds, forked = early_crash(early_lab)
        early.append(seconds)
        early_warm += forked
        parent = psutil.Process(warm.lab.state()["warm_parent"]["pid"])
        memory = parent.memory_full_info()
        rss.append(memory.rss / 2**20)
        uss.append(memory.uss / 2**20)
        say(
            f"  run {i + 1}/{runs}: plain {plain[-1]:.3f} s; kill -9 -> answering: "
            f"warm {warm.kill_s[-1]:.3f} s, cold {cold.kill_s[-1]:.3f} s; port change: "
            f"warm {warm.port_s[-1]:.3f} s, cold {cold.port_s[-1]:.3f} s; kill -9 while the "
            f"warm parent imports: {early[-1]:.3f} s; warm parent {rss[-1]:.1f} MiB RSS"
        )
    for mode in (warm, cold):
        mode.lab.shutdown()
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
        Metric(
            "kill -9 at the first ready -> /api 200",
            "s",
            early,
            base,
            plain,
            EARLY_GOAL,
            note="a fresh jlservice run, a kernel and a terminal open, the warm parent still "
            f"importing; forked from it: {early_warm} of {len(early)}",
        ),
        Metric("warm parent RSS", "MiB", rss, note="resident memory after each run"),
        Metric("warm parent USS", "MiB", uss, note="memory only it holds (not shared)"),
    ]
    extra = {"plain_s": plain, "early_s": early, "early_warm": early_warm}
    return metrics, {**extra, "warm": warm.samples(), "cold": cold.samples()}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__, runs=10)
    args = parse(p, argv, "jlservice", "jupyter-lab", "python")
    return run("bench/warm.py", "jlservice warm-restart benchmark", args, args.runs, measure)


if __name__ == "__main__":
    sys.exit(main())
