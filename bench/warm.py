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
from .report import Metric, Runs, say
from .session import Session, options, parse, run

KILL_GOAL = "ratio <= 0.15"  # warm kill -9 -> answering, to a plain cold start
PORT_GOAL = "ratio <= 0.3"  # warm port change -> new port answering
EARLY_GOAL = "ratio <= 1"  # kill -9 while the warm parent still imports: never slower


def restarts(lab: Lab, warm: bool, avoid: set[int], settle: float) -> dict[str, float]:
    """kill -9, then a port change: seconds to answering again; a start that was not as
    `warm` says is counted (fell_back) and warned about."""
    times = {"kill": lab.crash().back_s}
    fell_back = lab.state().get("started_warm") != warm
    time.sleep(settle)
    times["port"] = change_port(lab, avoid, settle)["api_s"]
    fell_back += lab.state().get("started_warm") != warm
    if fell_back:
        lab.warn(f"{'warm' if warm else 'cold'}: {fell_back} start(s) fell back")
    return {**times, "fell_back": fell_back}


def early_crash(lab: Lab) -> dict[str, float]:
    """A fresh `jlservice run` (defaults), a kernel and a terminal opened as soon as it is
    ready, then kill -9 of JupyterLab while the warm parent it made still imports: seconds
    to answering again, and whether that start was warm."""
    lab.timed_start()
    token = lab.current["token"]
    lab.start_kernel(token)
    lab.api("POST", "api/terminals", token).raise_for_status()
    importing = lab.state().get("warm_parent")
    if importing is None or importing["ready"]:
        lab.warn(f"early crash: the warm parent was not importing ({importing})")
    seconds = lab.crash().back_s
    warm = lab.state().get("started_warm") is True
    lab.shutdown()
    return {"early": seconds, "early_warm": warm}


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    runs, settle = session.args.runs, session.args.settle
    plain_lab = Lab(session, "plain")  # where the plain cold starts (the baseline) run
    plain_port = free_port()
    labs = {
        mode: Lab(session, mode, f"{mode}/config", wait_warm=warm, restart={"warm": warm})
        for mode, warm in (("warm", True), ("cold", False))
    }
    avoid = {plain_port, *(lab.port for lab in labs.values())}
    early_lab = Lab(session, "early")
    say("starting both supervisors; warm-up (plain start, a kill and a port change each)")
    for lab in labs.values():
        lab.timed_start()
        time.sleep(settle)
    plain_lab.plain_start(plain_port)
    for mode, lab in labs.items():
        restarts(lab, mode == "warm", avoid, settle)
    session.warnings.clear()
    s = Runs("run", runs)
    for _ in range(runs):
        values = {"plain": plain_lab.plain_start(plain_port)}
        for mode, lab in labs.items():
            times = restarts(lab, mode == "warm", avoid, settle)
            values.update({f"{mode} {k}": v for k, v in times.items()})
        values.update(early_crash(early_lab))
        memory = psutil.Process(labs["warm"].state()["warm_parent"]["pid"]).memory_full_info()
        s.add(**values, rss=memory.rss / 2**20, uss=memory.uss / 2**20)
    for lab in labs.values():
        lab.shutdown()
    cold = ("plain cold start", s["plain"])
    fell = f"forked by the warm parent; fell back to cold: {int(sum(s['warm fell_back']))}"
    early = "a kernel and a terminal open, forked from the importing warm parent: "
    early += f"{int(sum(s['early_warm']))} of {runs}"
    rows = [
        Metric("cold start: plain jupyter-lab", "s", s["plain"], note="spawn -> first 200 on /api"),
        Metric("kill -9 -> /api 200: warm", "s", s["warm kill"], KILL_GOAL, fell, cold),
        Metric("kill -9 -> /api 200: cold", "s", s["cold kill"], "", "warm = false", cold),
        Metric("port change -> new port 200: warm", "s", s["warm port"], PORT_GOAL, vs=cold),
        Metric("port change -> new port 200: cold", "s", s["cold port"], "", "warm = false", cold),
        Metric("kill -9 at the first ready -> /api 200", "s", s["early"], EARLY_GOAL, early, cold),
        Metric("warm parent RSS", "MiB", s["rss"], note="resident memory after each run"),
        Metric("warm parent USS", "MiB", s["uss"], note="memory only it holds (not shared)"),
    ]
    return rows, {"samples": s}


def main(argv: list[str] | None = None) -> int:
    args = parse(options(__doc__, runs=10, settle=True), argv, "jlservice", "jupyter-lab", "python")
    return run("bench/warm.py", "jlservice warm-restart benchmark", args, measure)


if __name__ == "__main__":
    sys.exit(main())
