"""Kernels that survive JupyterLab: what a user waits for, what is lost, what it costs.

    python -m bench.kernels [--runs 5] [--cycles 50] [--adopt 32] [--json PATH]

- tab: an open notebook tab in headless Chromium; kill -9 JupyterLab -> the tab's next cell
  result, and a config reload (an [lab.options] change) -> the next cell result.
- soak: --cycles kill -9 of JupyterLab with 4 kernels, one of them busy printing a numbered
  line every 0.1 s, read by a websocket client that reconnects as soon as it can: kernels
  kept in each cycle, lines printed during each gap and never received, the supervisor's
  file descriptors and resident memory, and no process left after the stop.
- adopt: --adopt kernels, kill -9: how long the next JupyterLab takes to adopt them (its
  own log: before it serves, and setting up their channels once it runs), per kernel.

jlservice runs with its defaults (warm restarts, survive_restarts, grace 30 s). How each is
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
import uuid
from typing import Any

import psutil
import websocket
from helpers.notebook import EXPOSE_APP, open_tab
from helpers.procs import wait_for

from .lab import Lab, event_time
from .report import Metric, say
from .session import BenchError, Session, options, parse, run

TICK = (
    "import itertools, time\n"
    "for i in itertools.count():\n    print(f'tick-{i}', flush=True)\n    time.sleep(0.1)"
)
_ADOPTED = re.compile(r"jlservice: adopted (\d+) kernels in ([0-9.]+) ms")
_WATCHING = re.compile(r"jlservice: watching (\d+) adopted kernels in ([0-9.]+) ms")


def kernels_adopted(lab: Lab, ids: list[str], offset: int, timeout: float = 60) -> set[str]:
    """The kernels of `ids` adopted after byte `offset` of the log, waiting up to `timeout`."""

    def found() -> set[str]:
        events = lab.log_events(offset)
        return {e.get("kernel_id") for e in events if e.get("event") == "kernel_adopted"}

    with contextlib.suppress(AssertionError):  # those found by then
        wait_for(lambda: set(ids) <= found(), timeout, "the adoptions", 0.01)
    return found() & set(ids)


def crash(lab: Lab) -> tuple[int, float]:
    """kill -9 JupyterLab; (log offset, monotonic time of the kill) once it is ready again."""
    old, offset = lab.current["lab_pid"], lab.log_size()
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    lab.current = lab.wait_ready(not_pid=old)
    return offset, killed


# ── tab ──────────────────────────────────────────────────────────────────────


def measure_tab(session: Session) -> list[Metric]:
    runs = session.args.runs
    lab = Lab(session, "tab", "tab/config", wait_warm=True)
    lab.sections["lab"]["options"] = dict(EXPOSE_APP)
    lab.write_config()
    lab.timed_start()
    browser, tab = open_tab(lab, session.work / "chromium")
    kill_ms, reload_ms = [], []
    try:
        tab.run(0)
        wait_for(lambda: tab.kernel_status() == "connected", 60, "the kernel")
        for i in range(runs + 1):  # the first is a warm-up
            _, killed = crash_noticed(lab, tab)
            tab.run(1, f"x + {i}")
            wait_for(lambda i=i: str(41 + i) in tab.output(1), 120, "the result in the tab", 0.005)
            if i:
                kill_ms.append((time.monotonic() - killed) * 1000)
            lab.current = lab.wait_ready(timeout=120)
            time.sleep(session.args.settle)
        for i in range(runs):
            old = lab.current["lab_pid"]
            lab.sections["lab"]["options"]["ServerApp.iopub_msg_rate_limit"] = 1000 + i
            lab.write_config()
            saved = time.monotonic()
            wait_for(lambda: tab.kernel_status() != "connected", 60, "the tab to notice", 0.002)
            tab.run(2, f"x - {i}")
            wait_for(lambda i=i: str(41 - i) in tab.output(2), 120, "the result in the tab", 0.005)
            reload_ms.append((time.monotonic() - saved) * 1000)
            lab.current = lab.wait_ready(not_pid=old, timeout=120)
            time.sleep(session.args.settle)
        say(f"  tab: kill -9 -> result {kill_ms} ms; reload -> result {reload_ms} ms")
    finally:
        browser.close()
        lab.shutdown()
    return [
        Metric(
            "kill -9 -> the open tab's next cell result",
            "ms",
            kill_ms,
            goal=1000,
            goal_on="median",
            note="Chromium, no page reload; warm restart; the cell is run once the tab has "
            "noticed the lost connection",
        ),
        Metric(
            "config reload -> the next cell result",
            "ms",
            reload_ms,
            note="[lab.options] changed in the file: debounce 0.2 s, old server's stop, warm "
            "start, adoption, the tab's reconnection",
        ),
    ]


def crash_noticed(lab: Lab, tab: Any) -> tuple[int, float]:
    """kill -9 JupyterLab, and wait until the tab knows (a cell run before that would go to
    the dead connection)."""
    old, offset = lab.current["lab_pid"], lab.log_size()
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: tab.kernel_status() != "connected", 30, "the tab to notice", 0.002)
    return offset, killed


# ── soak ─────────────────────────────────────────────────────────────────────


class Listener(threading.Thread):
    """A websocket client of one kernel that reconnects as soon as it can, and notes every
    `tick-N` line the kernel prints."""

    def __init__(self, lab: Lab, token: str, kernel_id: str) -> None:
        super().__init__(daemon=True)
        self.url = lab.base.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
        self.header = [f"Authorization: token {token}"]
        self.seen: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                ws = websocket.create_connection(self.url, header=self.header, timeout=2)
            except (OSError, websocket.WebSocketException):
                time.sleep(0.01)
                continue
            ws.settimeout(None)  # a quiet kernel is no lost connection
            try:
                while not self.done.is_set():
                    self._note(json.loads(ws.recv()))
            except (OSError, ValueError, websocket.WebSocketException):
                pass
            finally:
                ws.close()

    def _note(self, msg: dict[str, Any]) -> None:
        if msg.get("msg_type") == "stream":
            for word in msg["content"]["text"].split():
                if word.startswith("tick-"):
                    self.seen.append(int(word[5:]))

    def gaps(self) -> list[int]:
        """Lines never received, per gap in the numbering (one gap per crash)."""
        seen = sorted(set(self.seen))
        return [b - a - 1 for a, b in itertools.pairwise(seen) if b - a > 1]


def start_cell(lab: Lab, token: str, kernel_id: str, code: str) -> websocket.WebSocket:
    """Send an execute request and leave it running (on the websocket returned)."""
    url = lab.base.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=30)
    header = {"msg_id": uuid.uuid4().hex, "username": "bench", "session": uuid.uuid4().hex}
    header.update(msg_type="execute_request", version="5.3")
    content = {"code": code, "silent": False, "store_history": False, "user_expressions": {}}
    msg = {"header": header, "parent_header": {}, "metadata": {}, "channel": "shell"}
    ws.send(json.dumps({**msg, "content": {**content, "allow_stdin": False}}))
    return ws


def measure_soak(session: Session) -> list[Metric]:
    cycles = session.args.cycles
    lab = Lab(session, "soak", wait_warm=True)
    lab.timed_start()
    token = lab.current["token"]
    ids = []
    for n in range(4):
        body = {"path": f"soak-{n}.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
        response = lab.api("POST", "api/sessions", token, json=body)
        response.raise_for_status()
        ids.append(response.json()["kernel"]["id"])
        lab.execute(token, ids[-1], f"x = {n}")
    listener = Listener(lab, token, ids[0])
    listener.start()
    busy = start_cell(lab, token, ids[0], TICK)
    wait_for(lambda: len(listener.seen) > 5, 60, "the busy kernel's lines")
    kept, back_s, fds, rss = [], [], [], []
    supervisor = psutil.Process(lab.proc.pid)
    for i in range(cycles):
        offset, killed = crash(lab)
        back_s.append(time.monotonic() - killed)
        kept.append(len(kernels_adopted(lab, ids, offset)))
        fds.append(supervisor.num_fds())
        rss.append(supervisor.memory_info().rss / 2**20)
        if i % 10 == 9:
            say(f"  soak: {i + 1}/{cycles} cycles, kept {sum(kept)}/{4 * (i + 1)}")
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
    gaps = listener.gaps()
    return [
        Metric(
            f"kernels not kept, over {cycles} kill -9 cycles",
            "%",
            [100 - 100 * k / 4 for k in kept],
            goal=0,
            goal_on="max",
            note=f"4 kernels, one busy: {sum(kept)} of {4 * cycles} adopted by the next "
            "JupyterLab (goal: all kept every time)",
        ),
        Metric("  kill -9 -> ready again", "s", back_s, note="warm restarts; context"),
        Metric(
            "output lines lost during the gap",
            "lines",
            [float(g) for g in gaps] or [0.0],
            note=f"a line every 0.1 s; per crash ({len(gaps)} gaps seen); a client that "
            "reconnects at once",
        ),
        Metric(
            "supervisor fds: first -> last cycle",
            "fds",
            [float(fds[-1] - fds[0])],
            note=f"{fds[0]} -> {fds[-1]}",
        ),
        Metric(
            "supervisor RSS: first -> last cycle",
            "MiB",
            [rss[-1] - rss[0]],
            note=f"{rss[0]:.1f} -> {rss[-1]:.1f} MiB; processes left after the stop: {left}",
        ),
    ]


# ── adopt ────────────────────────────────────────────────────────────────────


def measure_adopt(session: Session) -> list[Metric]:
    count, runs = session.args.adopt, session.args.runs
    lab = Lab(session, "adopt", wait_warm=True)
    lab.timed_start()
    token = lab.current["token"]
    ids = []
    say(f"  adopt: starting {count} kernels")
    for _ in range(count):
        response = lab.api("POST", "api/kernels", token, json={"name": "python3"})
        response.raise_for_status()
        ids.append(response.json()["id"])

    # Listed once started (POST returns then); a kernel never connected to may say
    # "starting" for good, so its state is not waited for.
    wait_for(lambda: len(lab.api("GET", "api/kernels", token).json()) == count, 60, "kernels")
    before, after, all_ms = [], [], []
    for i in range(runs):
        offset, killed = crash(lab)
        adopted = kernels_adopted(lab, ids, offset, timeout=120)
        if len(adopted) != count:
            raise BenchError(f"run {i + 1}: {len(adopted)} of {count} kernels adopted")
        events = lab.log_events(offset)
        lines = [e.get("line", "") for e in events if e.get("event") == "lab_output"]
        first = next(m for line in lines if (m := _ADOPTED.search(line)))
        second = next(m for line in lines if (m := _WATCHING.search(line)))
        before.append(float(first[2]) / count)
        after.append(float(second[2]) / count)
        last = max(event_time(e) for e in events if e.get("event") == "kernel_adopted")
        all_ms.append((last - (time.time() - (time.monotonic() - killed))) * 1000)
        say(f"  adopt run {i + 1}/{runs}: {first[2]} ms + {second[2]} ms for {count}")
        time.sleep(session.args.settle)
    lab.shutdown()
    return [
        Metric(
            f"adoption per kernel, {count} kernels: before serving",
            "ms",
            before,
            goal=5,
            goal_on="median",
            note="connection file, pidfd, /proc checks, the kernel's manager (JupyterLab's log)",
        ),
        Metric(
            "  and setting up their channels once it runs",
            "ms",
            after,
            note="restarter, control socket, activity stream (after it answers)",
        ),
        Metric(f"  kill -9 -> all {count} adopted (jlservice's log)", "ms", all_ms),
    ]


PHASES = {"tab": measure_tab, "soak": measure_soak, "adopt": measure_adopt}


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    metrics: list[Metric] = []
    for name in session.args.only or list(PHASES):
        say(f"{name}:")
        metrics += PHASES[name](session)
    return metrics, {}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__, runs=5)
    p.add_argument("--cycles", type=int, default=50, help="soak kill -9 cycles (default 50)")
    p.add_argument("--adopt", type=int, default=32, help="kernels to adopt (default 32)")
    p.add_argument("--only", action="append", choices=list(PHASES), help="some phases only")
    args = parse(p, argv, "jlservice", "jupyter-lab", "python")
    return run("bench/kernels.py", "jlservice kernels-survive benchmark", args, args.runs, measure)


if __name__ == "__main__":
    sys.exit(main())
