"""Kernels that survive JupyterLab: what a user waits for, what is lost, what it costs.

    python -m bench.kernels [--runs 5] [--cycles 50] [--adopt 32] [--only tab|soak|adopt]

tab: kill -9 -> an open Chromium tab connected again; kill -9 or a config reload -> its
next cell result; soak: --cycles kill -9 with 4 kernels, one busy (kernels kept, output
lost, fds, RSS, leftovers); adopt: the next JupyterLab's adoption cost per kernel.
jlservice with its defaults (warm restarts, survive_restarts, grace 30 s). How each is
measured: bench/README.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Any

import psutil
import websocket
from helpers.metrics import open_notebook
from helpers.notebook import EXPOSE_APP, Tab, open_tab
from helpers.procs import wait_for
from helpers.service import event_time, execute_request

from .lab import Lab
from .report import Metric, Runs, say
from .session import BenchError, Session, options, parse, run

TICK = (
    "import itertools, time\n"
    "for i in itertools.count():\n    print(f'tick-{i}', flush=True)\n    time.sleep(0.1)"
)
# JupyterLab's lines: the wall-clock time, and its CPU time, of each part of the adoption.
_TOOK = r"in ([0-9.]+) ms \(([0-9.]+) ms of CPU\)"
_ADOPTED = re.compile(r"jlservice: adopted (\d+) kernels " + _TOOK)
_WATCHING = re.compile(r"jlservice: watching (\d+) adopted kernels " + _TOOK)


def kernels_adopted(lab: Lab, ids: list[str], offset: int, timeout: float = 60) -> set[str]:
    """The kernels of `ids` adopted after byte `offset` of the log, waiting up to `timeout`."""

    def found() -> set[str]:
        events = lab.log_events(offset)
        return {e.get("kernel_id") for e in events if e.get("event") == "kernel_adopted"}

    with contextlib.suppress(AssertionError):  # those found by then
        wait_for(lambda: set(ids) <= found(), timeout, "the adoptions", 0.01)
    return found() & set(ids)


def lab_line(lab: Lab, pattern: re.Pattern[str], offset: int, timeout: float = 60) -> re.Match[str]:
    """The first line JupyterLab printed after byte `offset` of the log that matches
    `pattern`, once there (a line logged once its loop runs may come after the adoptions)."""

    def found() -> re.Match[str] | None:
        lines = (
            e.get("line", "") for e in lab.log_events(offset) if e.get("event") == "lab_output"
        )
        return next((m for line in lines if (m := pattern.search(line))), None)

    return wait_for(found, timeout, f"JupyterLab's line {pattern.pattern!r}", 0.01)


def run_cell(tab: Tab, cell: int, code: str, expected: int) -> tuple[float, float]:
    """Once the tab has noticed the lost connection (a cell run before would go to the dead
    one), run `code` in `cell`: time.monotonic() when the tab's kernel is connected again
    (polled every 5 ms) and when the result shows."""
    wait_for(lambda: tab.kernel_status() != "connected", 60, "the tab to notice", 0.002)
    tab.run(cell, code)
    wait_for(lambda: tab.kernel_status() == "connected", 120, "the tab to reconnect", 0.005)
    connected = time.monotonic()
    wait_for(lambda: str(expected) in tab.output(cell), 120, "the result in the tab", 0.005)
    return connected, time.monotonic()


def measure_tab(session: Session) -> list[Metric]:
    runs, settle = session.args.runs, session.args.settle
    lab = Lab(session, "tab", "tab/config", wait_warm=True)
    lab.sections["lab"]["options"] = dict(EXPOSE_APP)
    lab.write_config()
    lab.timed_start()
    browser, tab = open_tab(lab, session.work / "chromium")
    back_ms, kill_ms, reload_ms = [], [], []
    try:
        tab.run(0, "x = 41\nprint('x set')")
        wait_for(lambda: "x set" in tab.output(0), 60, "x = 41 in the tab")
        for i in range(runs + 1):  # the first is a warm-up
            os.kill(lab.current["lab_pid"], signal.SIGKILL)
            killed = time.monotonic()
            connected, shown = run_cell(tab, 1, f"x + {i}", 41 + i)
            if i:
                back_ms.append((connected - killed) * 1000)
                kill_ms.append((shown - killed) * 1000)
            lab.wait_ready(timeout=120)
            time.sleep(settle)
        for i in range(runs):
            old = lab.current["lab_pid"]
            lab.sections["lab"]["options"]["ServerApp.iopub_msg_rate_limit"] = 1000 + i
            lab.write_config()
            saved = time.monotonic()
            reload_ms.append((run_cell(tab, 2, f"x - {i}", 41 - i)[1] - saved) * 1000)
            lab.wait_ready(not_pid=old, timeout=120)
            time.sleep(settle)
        say(f"  tab: kill -9 -> connected {back_ms} ms, result {kill_ms} ms")
        say(f"  tab: reload -> result {reload_ms} ms")
    finally:
        browser.close()
        lab.shutdown()
    tab_note = "Chromium, no page reload; warm restart"
    queued = f"{tab_note}; run once the tab noticed, sent at reconnection by the labextension"
    reload = "[lab.options] changed: debounce, stop, warm start, adoption, reconnection"
    return [
        Metric("kill -9 -> the open tab connected again", "ms", back_ms, note=tab_note),
        Metric("kill -9 -> the open tab's next cell result", "ms", kill_ms, "<= 1000", queued),
        Metric("config reload -> the next cell result", "ms", reload_ms, note=reload),
    ]


class Listener(threading.Thread):
    """A websocket client of one kernel that reconnects as soon as it can, and notes every
    `tick-N` line the kernel prints."""

    def __init__(self, lab: Lab, token: str, kernel_id: str) -> None:
        super().__init__(daemon=True)
        self.connect = lambda: lab.channels(token, kernel_id, 2)
        self.seen: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                ws = self.connect()
            except (OSError, websocket.WebSocketException):
                time.sleep(0.01)
                continue
            ws.settimeout(None)  # a quiet kernel is no lost connection
            with contextlib.suppress(OSError, ValueError, websocket.WebSocketException):
                while not self.done.is_set():
                    msg = json.loads(ws.recv())
                    if msg.get("msg_type") == "stream":
                        words = msg["content"]["text"].split()
                        self.seen += [int(w[5:]) for w in words if w.startswith("tick-")]
            ws.close()

    def gaps(self) -> list[int]:
        """Lines never received, per gap in the numbering (one gap per crash)."""
        seen = sorted(set(self.seen))
        return [b - a - 1 for a, b in itertools.pairwise(seen) if b - a > 1]


def measure_soak(session: Session) -> list[Metric]:
    cycles = session.args.cycles
    lab = Lab(session, "soak", wait_warm=True)
    lab.timed_start()
    token = lab.current["token"]
    ids = [open_notebook(lab, token, f"soak-{n}.ipynb")[0] for n in range(4)]
    for n, kernel_id in enumerate(ids):
        lab.execute(token, kernel_id, f"x = {n}")
    listener = Listener(lab, token, ids[0])
    listener.start()
    busy = lab.channels(token, ids[0], 30)
    busy.send(json.dumps(execute_request(TICK)))  # left running
    wait_for(lambda: len(listener.seen) > 5, 60, "the busy kernel's lines")
    supervisor = psutil.Process(lab.proc.pid)
    s = Runs("cycle", cycles)
    for _ in range(cycles):
        crash = lab.crash()
        kept = len(kernels_adopted(lab, ids, crash.offset))
        rss = supervisor.memory_info().rss / 2**20
        s.add(kept=kept, ready=crash.ready_s, fds=supervisor.num_fds(), rss=rss)
        time.sleep(session.args.settle)
    time.sleep(1)  # the last gap's first lines after it
    listener.done.set()
    busy.close()
    for n, kernel_id in enumerate(ids[1:], start=1):
        if lab.execute(token, kernel_id, "x").strip() != str(n):
            raise BenchError(f"kernel {kernel_id} lost its state")
    pids = [p.pid for p in supervisor.children(recursive=True)]
    lab.shutdown()
    left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    gaps, kept, fds, rss = listener.gaps(), s["kept"], s["fds"], s["rss"]
    name = f"kernels not kept, over {cycles} kill -9 cycles"
    adopted = f"4 kernels, one busy: {sum(kept):.0f} of {4 * cycles} adopted by the next JupyterLab"
    lost = (
        f"a line every 0.1 s; per crash ({len(gaps)} gaps seen); a client that reconnects at once"
    )
    fd_note, rss_note = f"{fds[0]:.0f} -> {fds[-1]:.0f}", f"{rss[0]:.1f} -> {rss[-1]:.1f} MiB"
    rss_note += f"; processes left after the stop: {left}"
    return [
        Metric(name, "%", [100 - 25 * k for k in kept], "max <= 0", adopted),
        Metric("  kill -9 -> ready again", "s", s["ready"], note="warm restarts; context"),
        Metric(
            "output lines lost during the gap", "lines", [*map(float, gaps)] or [0.0], note=lost
        ),
        Metric("supervisor fds: first -> last cycle", "fds", [fds[-1] - fds[0]], note=fd_note),
        Metric("supervisor RSS: first -> last cycle", "MiB", [rss[-1] - rss[0]], note=rss_note),
    ]


def measure_adopt(session: Session) -> list[Metric]:
    count, runs = session.args.adopt, session.args.runs
    lab = Lab(session, "adopt", wait_warm=True)
    lab.timed_start()
    token = lab.current["token"]
    say(f"  adopt: starting {count} kernels")
    ids = []
    for _ in range(count):
        response = lab.api("POST", "api/kernels", token, json={"name": "python3"})
        response.raise_for_status()
        ids.append(response.json()["id"])
    # Listed once started (POST returns then); a kernel never connected to may say
    # "starting" for good, so its state is not waited for.
    wait_for(lambda: len(lab.api("GET", "api/kernels", token).json()) == count, 60, "kernels")
    s = Runs("adopt run", runs)
    for i in range(runs):
        crash = lab.crash()
        if len(adopted := kernels_adopted(lab, ids, crash.offset, timeout=120)) != count:
            raise BenchError(f"run {i + 1}: {len(adopted)} of {count} kernels adopted")
        before = lab_line(lab, _ADOPTED, crash.offset)
        after = lab_line(lab, _WATCHING, crash.offset)
        events = lab.log_events(crash.offset)
        last = max(event_time(e) for e in events if e.get("event") == "kernel_adopted")
        s.add(
            before=float(before[2]) / count,
            after=float(after[2]) / count,
            cpu=(float(before[3]) + float(after[3])) / count,
            adopted=(last - crash.wall) * 1000,
        )
        time.sleep(session.args.settle)
    lab.shutdown()
    name = f"adoption per kernel, {count} kernels: JupyterLab's CPU time, both parts"
    cpu = "JupyterLab's process time over the two parts below (its log)"
    before = "connection file, pidfd, /proc checks, the kernel's manager"
    channels = "  and setting up their channels once its loop runs (wall clock)"
    after = "restarter, activity stream, kernel_info asked on control and shell"
    return [
        Metric(name, "ms", s["cpu"], "<= 5", cpu),
        Metric("  before serving (wall clock)", "ms", s["before"], note=before),
        Metric(channels, "ms", s["after"], note=after),
        Metric(f"  kill -9 -> all {count} adopted (jlservice's log)", "ms", s["adopted"]),
    ]


PHASES = {"tab": measure_tab, "soak": measure_soak, "adopt": measure_adopt}


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    metrics: list[Metric] = []
    for name in session.args.only or list(PHASES):
        say(f"{name}:")
        metrics += PHASES[name](session)
    return metrics, {}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__, runs=5, settle=True)
    p.add_argument("--cycles", type=int, default=50, help="soak kill -9 cycles (default 50)")
    p.add_argument("--adopt", type=int, default=32, help="kernels to adopt (default 32)")
    p.add_argument("--only", action="append", choices=list(PHASES), help="some phases only")
    args = parse(p, argv, "jlservice", "jupyter-lab", "python")
    return run("bench/kernels.py", "jlservice kernels-survive benchmark", args, measure)


if __name__ == "__main__":
    sys.exit(main())
