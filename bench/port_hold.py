"""The port held by another program for 10 minutes, with the default [restart].

    python -m bench.port_hold [--minutes 10] [--systemd] [--json PATH]   (--systemd: as root)

`jlservice run` must keep waiting, name the holder and serve within max_delay (30 s) of the
port being let go; with --systemd, the shipped unit in the sandbox of tests/systemd must stay
active (one MainPID, NRestarts 0) and serve once it is free. How: bench/README.md.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from helpers.procs import wait_for
from helpers.service import NotifySocket, event_time
from helpers.squatter import Squatter, waits_announced
from sandbox import available

from jlservice import users
from jlservice.config import RestartConfig

from .lab import Lab, http_ok
from .report import Metric, say
from .session import BenchError, Session, options, parse, run
from .systemd import installed

SAMPLE_S = 5.0  # how often the hold looks at jlservice (or the unit)
MAX_DELAY = RestartConfig().max_delay


def hold(seconds: float, sample: Callable[[], dict[str, str]]) -> list[dict[str, str]]:
    """`sample()` every SAMPLE_S for `seconds`; what it returned."""
    seen: list[dict[str, str]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(sample())
        if len(seen) % 12 == 1:
            say(f"held {seconds - (end - time.monotonic()):.0f} s of {seconds:.0f}: {seen[-1]}")
        time.sleep(min(SAMPLE_S, max(end - time.monotonic(), 0)))
    return seen


def answered(port: int, freed: float) -> float:
    wait_for(lambda: http_ok(port), 120, "JupyterLab once the port is free", 0.01)
    return time.monotonic() - freed


def outside(session: Session, seconds: float) -> tuple[list[Metric], dict[str, Any]]:
    lab = Lab(session, "held")
    sock = NotifySocket(session.work / "notify.sock")
    squatter = Squatter(session.work / "squatter.jsonl", "127.0.0.1", lab.port, b"jupyter-lab")
    try:
        with squatter.start(users.current()):
            squatter.wait_listening()
            lab.start(wait=False, env={"NOTIFY_SOCKET": sock.path})

            def sample() -> dict[str, str]:
                if lab.proc.poll() is not None:
                    raise BenchError(f"jlservice run exited with {lab.proc.returncode}")
                with contextlib.suppress(AssertionError):  # reads what is queued, no more
                    sock.read_until(lambda _: False, timeout=0.01)
                return {"status": lab.state().get("status", "?")}

            seen = hold(seconds, sample)
        freed_wall = time.time()
        back = answered(lab.port, time.monotonic())
    finally:
        sock.close()
    retried = event_time(lab.wait_event("lab_starting")) - freed_wall
    waits = waits_announced([m["STATUS"] for _, m in sock.messages if "STATUS" in m])
    lab.shutdown()
    logged = [e["event"] for e in lab.log_events()].count("lab_port_in_use")
    note = (
        f"held {seconds:.0f} s: jlservice ran throughout (state.json "
        f"{sorted({s['status'] for s in seen})}), {len(waits)} waits, longest "
        f"{max(waits):g} s, the holder logged {logged}×"
    )
    spawned = "port freed -> JupyterLab spawned (jlservice run)"
    return [
        Metric(spawned, "s", [retried], f"max <= {MAX_DELAY:g}", note),
        Metric("port freed -> /api answering (jlservice run)", "s", [back]),
    ], {"waits": waits, "samples": seen}


def under_systemd(session: Session, seconds: float) -> tuple[list[Metric], dict[str, Any]]:
    props = ("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
    with installed(session) as (box, account, port):
        inside = ("nsenter", "-t", str(box.pid1), "-m", "-p", "setpriv")
        inside += (f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups")
        squatter = Squatter(session.work / "squatter.jsonl", "127.0.0.1", port, b"jupyter-lab")
        with squatter.start(account, inside):
            squatter.wait_listening()
            box.systemctl("daemon-reload")
            box.systemctl("start", "jlservice")  # returns at READY=1: the first wait
            seen = hold(seconds, lambda: box.show("jlservice", *props))
        back = answered(port, time.monotonic())
        last = box.show("jlservice", *props)
        box.systemctl("stop", "jlservice")
    waits = waits_announced([s["StatusText"] for s in seen])
    states = sorted({(s["ActiveState"], s["SubState"]) for s in seen})
    pids, restarts = (sorted({s[key] for s in [*seen, last]}) for key in ("MainPID", "NRestarts"))
    note = (
        f"held {seconds:.0f} s: unit states {states}, MainPID {pids}, NRestarts {restarts}, "
        f"longest wait announced {max(waits):g} s; goal: max_delay and a cold start"
    )
    name = "port freed -> /api answering (systemd unit)"
    metric = Metric(name, "s", [back], f"max <= {MAX_DELAY + 5:g}", note)
    if {a for a, _ in states} != {"active"} or len(pids) != 1 or restarts != ["0"]:
        session.warnings.append(f"the unit did not stay active on one MainPID: {note}")
    return [metric], {"states": states, "main_pids": pids, "nrestarts": restarts}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__)
    p.add_argument("--minutes", type=float, default=10, help="how long to hold (default 10)")
    p.add_argument("--systemd", action="store_true", help="the shipped unit in the sandbox")
    args = parse(p, argv, "jlservice", "jupyter-lab", "python")
    seconds = args.minutes * 60
    if seconds < MAX_DELAY:
        p.error("--minutes must cover at least one wait of max_delay")
    if args.systemd and (why := "needs root" if os.geteuid() else available()):
        print(f"bench/port_hold.py --systemd: {why}", file=sys.stderr)
        return 1
    measure = under_systemd if args.systemd else outside
    title = "the port held " + ("under systemd" if args.systemd else "outside systemd")
    return run("bench/port_hold.py", title, args, lambda s: measure(s, seconds), 1)


if __name__ == "__main__":
    sys.exit(main())
