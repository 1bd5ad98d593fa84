"""systemd benchmark: the installed unit under a real systemd (PID 1 of private namespaces).

    /opt/jlservice-test-venv/bin/python -m bench.systemd [--runs 7] [--json PATH]   (as root)

The sandbox of tests/systemd: `systemctl start` vs the same configuration run by hand; a
"reboot" -> the enabled service answering; each unit's `systemd-analyze security` exposure.
How each is measured: bench/README.md.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from helpers.accounts import throwaway_user
from helpers.procs import free_port, stop, wait_for
from helpers.service import LabClient, render_toml
from helpers.units import UNITS, exposure, render
from sandbox import JLSERVICE, Sandbox, available

from jlservice import users

from .lab import Lab
from .report import Metric, Runs
from .session import BenchError, Session, options, parse, run


def answers(port: int, token: str) -> bool:
    try:
        response = LabClient(f"http://127.0.0.1:{port}/").api("GET", "api/status", token)
    except OSError:  # requests' errors are OSErrors
        return False
    return response.status_code == 200


def by_hand(session: Session, config_text: str, run: int) -> float:
    """spawn -> ready (state.json, polled every 5 ms) of `jlservice run` with the unit's
    configuration and state dirs of its own."""
    svc = Lab(session, f"by-hand-{run}")
    svc.command = (JLSERVICE,)
    svc.write_config(config_text + "\n" + render_toml({"service": svc.sections["service"]}))

    def ready() -> bool:
        if svc.proc.poll() is not None:
            raise BenchError(f"jlservice run exited with {svc.proc.returncode}: {svc.log_path}")
        return svc.state().get("status") == "ready"

    began = time.monotonic()
    svc.start(wait=False)
    wait_for(ready, 120, "jlservice run to be ready", interval=0.005)
    took = time.monotonic() - began
    stop(svc.proc, 45)
    return took


def exposures(work: Path) -> dict[str, float]:
    """Each shipped unit's `systemd-analyze security` exposure."""
    out = {}
    for source, name, scope in UNITS:
        path, env = render(work / "units", JLSERVICE, source, name, scope)
        score, _ = exposure(path, env, scope)
        if score is None:
            raise BenchError(f"systemd-analyze security said nothing about {source}")
        out[source] = score
    return out


@contextlib.contextmanager
def installed(session: Session) -> Iterator[tuple[Sandbox, users.Account, int]]:
    """The shipped unit, installed by `jlservice install` for a throw-away user on a free
    port in a freshly booted sandbox: the sandbox, the user, the port."""
    session.work.chmod(0o755)  # the user enters it
    with throwaway_user("jlsbench") as account:
        box = Sandbox(session.work / "sandbox")
        try:
            box.boot()
            port = free_port()
            box.run(JLSERVICE, "install", "--user", account.name, "--port", str(port))
            box.log_to_file("jlservice.service")
            yield box, account, port
        finally:
            box.close()


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    s = Runs("run", session.args.runs)
    with installed(session) as (box, _, port):
        box.systemctl("enable", "jlservice")
        config_text = (box.root / "etc-jlservice" / "jlservice.toml").read_text()
        hand_config = config_text.replace(f"port = {port}", f"port = {free_port()}")
        for run in range(session.args.runs + 1):  # the first of each is an untimed warm-up
            t0 = time.monotonic()
            box.systemctl("start", "jlservice")
            took = time.monotonic() - t0
            token = box.run(JLSERVICE, "token").stdout.strip()
            if not answers(port, token):
                raise BenchError("systemctl start returned but JupyterLab does not answer")
            hand = by_hand(session, hand_config, run)
            t0 = time.monotonic()
            box.reboot()
            wait_for(lambda t=token: answers(port, t), 120, "the service after the reboot", 0.01)
            reboot = time.monotonic() - t0
            box.systemctl("stop", "jlservice")
            if run:
                s.add(start=took, by_hand=hand, reboot=reboot)
    scores = exposures(session.work)
    hand = ("jlservice run by hand -> ready", s["by_hand"])
    reboot = "boot of the sandbox's systemd + start of the enabled unit"
    metrics = [
        Metric("systemctl start -> returns (READY=1)", "s", s["start"], "ratio <= 1.05", vs=hand),
        Metric("reboot (kill PID 1) -> token answers", "s", s["reboot"], note=reboot),
    ]
    note = "systemd-analyze security --offline=true (0 = locked down, 10 = exposed)"
    for source, value in scores.items():
        goal = "" if source.startswith("user/") else "<= 5"
        metrics.append(Metric(f"exposure {source}", "score", [value], goal, note))
    return metrics, {"exposure": scores}


def main(argv: list[str] | None = None) -> int:
    args = parse(options(__doc__, runs=7, lab=False), argv, "jlservice", "python")
    if os.geteuid() != 0:
        print("bench/systemd.py needs root (namespaces, mounts, useradd)", file=sys.stderr)
        return 1
    if why := available():
        print(f"bench/systemd.py: {why}", file=sys.stderr)
        return 1
    return run("bench/systemd.py", "jlservice under systemd", args, measure)


if __name__ == "__main__":
    sys.exit(main())
