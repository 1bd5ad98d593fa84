"""Faults, measured with the default configuration (issue 14's closing figures).

    python -m bench.faults [--runs 5] [--json PATH]   (as root: the read-only remount)

Ten kill -9 one second apart; the state disk read-only during a crash, then writable ->
state.json current; SIGHUP -> RELOADING=1 with stdout a full unread pipe vs to a file.
How each is measured: bench/README.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers.fs import full_pipe, tmpfs
from helpers.procs import wait_for
from helpers.service import NotifySocket

from .lab import Lab
from .report import Metric, say
from .session import Session, options, parse, run


def crashes(session: Session) -> Metric:
    """Ten kill -9 one second apart, each after the last one answered again."""
    lab = Lab(session, "crashes", wait_warm=True)
    lab.start()
    back, warm = [], 0
    for _ in range(10):
        crash = lab.crash()
        back.append(crash.back_s)
        warm += lab.current["started_warm"] is True
        time.sleep(max(0.0, crash.wall + 1.0 - time.time()))  # the next kill 1 s after this one
    lab.shutdown()
    say(f"ten kill -9 one second apart: {', '.join(f'{s:.3f}' for s in back)} s")
    note = f"{warm} of 10 warm; worst {max(back):.3f} s; default [restart]"
    return Metric("kill -9 -> /api answering, ten 1 s apart", "s", back, note=note)


def read_only(session: Session, runs: int) -> Metric:
    """The state disk read-only while JupyterLab crashes, then writable: -> state.json
    current (the retry comes every publish.RETRY_S, so this spreads over 0–5 s)."""
    healed = []
    with tmpfs(session.work / "small") as disk:
        lab = Lab(session, "ro", service={"state_dir": str(disk / "state")})
        lab.state_dir = disk / "state"
        lab.start()
        spare = lab.root / "run" / "state.json"
        for _ in range(runs):
            subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
            try:
                old = lab.current["lab_pid"]
                os.kill(old, signal.SIGKILL)
                wait_for(lambda o=old: _spare_ready(spare, o), 60, "the restart (spare copy)")
                new = json.loads(spare.read_text())["lab_pid"]
            finally:
                subprocess.run(["mount", "-o", "remount,rw", disk], check=True)
            writable = time.monotonic()
            wait_for(lambda n=new: lab.state().get("lab_pid") == n, 30, "state.json", 0.005)
            healed.append(time.monotonic() - writable)
            lab.wait_ready()
        lab.shutdown()
    note = "retried every 5 s (publish.RETRY_S), whatever else is written meanwhile"
    return Metric("remount,rw -> state.json current again", "s", healed, note=note)


def _spare_ready(spare: Path, old: int) -> bool:
    try:
        current = json.loads(spare.read_text())
    except (OSError, ValueError):
        return False
    return current.get("status") == "ready" and current.get("lab_pid") not in (None, old)


def reload_latency(session: Session, runs: int, output: int | None, name: str) -> list[float]:
    """SIGHUP -> RELOADING=1 (its MONOTONIC_USEC: when jlservice sent it), `runs` times, in
    ms."""
    lab = Lab(session, name)
    sock = NotifySocket(session.work / f"{name}.sock")
    try:
        lab.start(wait=False, env={"NOTIFY_SOCKET": sock.path}, output=output)
        sock.read_until(lambda m: m.get("READY") == "1", timeout=180)
        latencies = []
        for _ in range(runs + 1):  # the first is a warm-up
            asked = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            lab.signal(signal.SIGHUP)
            reloading = sock.read_until(lambda m: m.get("RELOADING") == "1", timeout=30)
            latencies.append((int(reloading["MONOTONIC_USEC"]) * 1000 - asked) / 1e6)
            sock.read_until(lambda m: m.get("READY") == "1", timeout=30)
        lab.shutdown()
    finally:
        sock.close()
    return latencies[1:]


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    runs = session.args.runs
    metrics = [crashes(session)]
    if os.geteuid() == 0:
        metrics.append(read_only(session, runs))
    else:
        session.warnings.append("not root: the read-only remount is not measured")
    with full_pipe() as pipe:
        blocked = reload_latency(session, runs, pipe, "blocked")
    free = reload_latency(session, runs, None, "unblocked")
    note = "RELOADING=1's own MONOTONIC_USEC (when jlservice sent it) - the SIGHUP"
    name = "SIGHUP -> RELOADING=1, stdout a full unread pipe"
    metrics.append(Metric(name, "ms", blocked, note=note, vs=("stdout to a file", free)))
    return metrics, {}


def main(argv: list[str] | None = None) -> int:
    args = parse(options(__doc__, runs=5), argv, "jlservice", "jupyter-lab", "python")
    return run("bench/faults.py", "jlservice faults", args, measure)


if __name__ == "__main__":
    sys.exit(main())
