"""The port held by another program for 10 minutes, with the default [restart].

    python -m bench.port_hold [--minutes 10] [--systemd] [--json PATH]   (--systemd: as root)

Outside systemd, `jlservice run` must keep waiting (never exit), name the holder, and serve
within max_delay (30 s) of the port being let go. With --systemd, the shipped unit in the
sandbox of tests/systemd: it must stay active (never `failed`, the same MainPID, NRestarts 0)
and serve once the port is free. tests/faults/test_port_held.py and
tests/systemd/test_system_unit.py hold it past every backoff step (about a minute); this is
the full hold. How: bench/README.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from helpers.procs import free_port, wait_for
from helpers.service import NotifySocket
from helpers.squatter import Squatter, waits_announced
from sandbox import JLSERVICE, Sandbox, available

from jlservice import users
from jlservice.config import RestartConfig

from .lab import Lab, event_time, http_ok
from .report import Metric, say
from .session import BenchError, Session, options, parse, run

SAMPLE_S = 5.0  # how often the hold looks at jlservice (or the unit)


def hold(
    session: Session, seconds: float, sample: Callable[[], dict[str, str]]
) -> list[dict[str, str]]:
    """`sample()` every SAMPLE_S for `seconds`; what it returned."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(sample())
        if len(seen) % 12 == 1:
            say(f"held {seconds - (end - time.monotonic()):.0f} s of {seconds:.0f}: {seen[-1]}")
        time.sleep(min(SAMPLE_S, max(end - time.monotonic(), 0)))
    return seen


def outside(session: Session, seconds: float) -> tuple[list[Metric], dict[str, Any]]:
    lab = Lab(session, "held")
    sock = NotifySocket(session.work / "notify.sock")
    account = users.current()
    squatter = Squatter(session.work / "squatter.jsonl", "127.0.0.1", lab.port, b"jupyter-lab")
    try:
        with squatter.start(account):
            squatter.wait_listening()
            lab.start(wait=False, env={"NOTIFY_SOCKET": sock.path})

            def sample() -> dict[str, str]:
                if lab.proc.poll() is not None:
                    raise BenchError(f"jlservice run exited with {lab.proc.returncode}")
                sock.sock.settimeout(0)
                while True:
                    try:
                        data = sock.sock.recv(4096).decode()
                    except (BlockingIOError, TimeoutError):
                        break
                    fields = dict(x.split("=", 1) for x in data.splitlines() if "=" in x)
                    sock.messages.append((time.monotonic(), fields))
                return {"status": lab.state().get("status", "?")}

            seen = hold(session, seconds, sample)
        freed, freed_wall = time.monotonic(), time.time()
        wait_for(lambda: http_ok(lab.port), 120, "JupyterLab once the port is free", 0.01)
        back = time.monotonic() - freed
    finally:
        sock.close()
    retried = event_time(lab.wait_event("lab_starting")) - freed_wall
    statuses = [m["STATUS"] for _, m in sock.messages if "STATUS" in m]
    waits = waits_announced(statuses)
    lab.shutdown()
    events = [e["event"] for e in lab.log_events()]
    states = sorted({s["status"] for s in seen})
    note = (
        f"held {seconds:.0f} s: jlservice ran throughout (state.json {states}), {len(waits)} "
        f"waits, longest {max(waits):g} s, the holder logged {events.count('lab_port_in_use')}×"
    )
    metrics = [
        Metric(
            "port freed -> JupyterLab spawned (jlservice run)",
            "s",
            [retried],
            goal=RestartConfig().max_delay,
            goal_on="max",
            note=note,
        ),
        Metric("port freed -> /api answering (jlservice run)", "s", [back]),
    ]
    return metrics, {"waits": waits, "samples": seen}


def under_systemd(session: Session, seconds: float) -> tuple[list[Metric], dict[str, Any]]:
    user = "jlsbench" + os.urandom(3).hex()
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
    box = Sandbox(session.work / "sandbox")
    try:
        session.work.chmod(0o755)
        box.boot()
        port = free_port()
        box.run(JLSERVICE, "install", "--user", user, "--port", str(port))
        box.log_to_file("jlservice.service")
        account = users.lookup(user)
        inside = ("nsenter", "-t", str(box.pid1), "-m", "-p", "setpriv", f"--reuid={account.uid}")
        inside += (f"--regid={account.gid}", "--clear-groups")
        squatter = Squatter(session.work / "squatter.jsonl", "127.0.0.1", port, b"jupyter-lab")
        props = ("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText")
        with squatter.start(account, inside):
            squatter.wait_listening()
            box.systemctl("daemon-reload")
            box.systemctl("start", "jlservice")  # returns at READY=1: the first wait
            seen = hold(session, seconds, lambda: box.show("jlservice", *props))
        freed = time.monotonic()
        wait_for(lambda: http_ok(port), 120, "JupyterLab once the port is free", 0.01)
        back = time.monotonic() - freed
        last = box.show("jlservice", *props)
        box.systemctl("stop", "jlservice")
    finally:
        box.close()
        subprocess.run(["userdel", "--remove", user], capture_output=True)
    waits = waits_announced([s["StatusText"] for s in seen])
    states = sorted({(s["ActiveState"], s["SubState"]) for s in seen})
    pids = sorted({s["MainPID"] for s in [*seen, last]})
    restarts = sorted({s["NRestarts"] for s in [*seen, last]})
    note = (
        f"held {seconds:.0f} s: unit states {states}, MainPID {pids}, NRestarts {restarts}, "
        f"longest wait announced {max(waits):g} s; goal: max_delay and a cold start"
    )
    limit = RestartConfig().max_delay + 5
    metric = Metric(
        "port freed -> /api answering (systemd unit)", "s", [back], goal=limit, goal_on="max"
    )
    metric.note = note
    if {a for a, _ in states} != {"active"} or len(pids) != 1 or restarts != ["0"]:
        session.warnings.append(f"the unit did not stay active on one MainPID: {metric.note}")
    return [metric], {"states": states, "main_pids": pids, "nrestarts": restarts}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__)
    p.add_argument("--minutes", type=float, default=10, help="how long to hold (default 10)")
    p.add_argument("--systemd", action="store_true", help="the shipped unit in the sandbox")
    args = parse(p, argv, "jlservice", "jupyter-lab", "python")
    seconds = args.minutes * 60
    if seconds < RestartConfig().max_delay:
        p.error("--minutes must cover at least one wait of max_delay")
    if args.systemd:
        if os.geteuid() != 0 or (why := available()):
            print(f"bench/port_hold.py --systemd: {why or 'needs root'}", file=sys.stderr)
            return 1
        measure = under_systemd
    else:
        measure = outside
    title = "the port held " + ("under systemd" if args.systemd else "outside systemd")
    return run("bench/port_hold.py", title, args, 1, lambda s: measure(s, seconds))


if __name__ == "__main__":
    sys.exit(main())
