"""systemd benchmark: the installed unit under a real systemd (PID 1 of private namespaces).

    /opt/jlservice-test-venv/bin/python -m bench.systemd [--runs 7] [--json PATH]   (as root)

The sandbox of tests/systemd: `systemctl start` vs the same configuration run by hand; a
"reboot" -> the enabled service answering; each unit's `systemd-analyze security` exposure.
How each is measured: bench/README.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from helpers.procs import free_port, stop, wait_for
from helpers.service import LabClient
from sandbox import JLSERVICE, Sandbox, available

from jlservice.admin import unit_files

from .report import Metric, say
from .session import BenchError, Session, options, parse, run


def answers(port: int, token: str) -> bool:
    try:
        response = LabClient(f"http://127.0.0.1:{port}/").api("GET", "api/status", token)
    except OSError:  # requests' errors are OSErrors
        return False
    return response.status_code == 200


def by_hand(session: Session, config_text: str, run: int) -> float:
    """spawn -> ready of `jlservice run` with the same [lab] as the unit, own state dirs."""
    work = session.work
    config = work / f"by-hand-{run}.toml"
    state_dir = work / f"by-hand-{run}-state"
    config.write_text(
        config_text
        + f'\n[service]\nstate_dir = "{state_dir}"\nruntime_dir = "{work}/by-hand-{run}-run"\n'
    )
    began = time.monotonic()
    proc = session.spawn([JLSERVICE, "run", "--config", str(config)], work / "hand.log")

    def ready() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"jlservice run exited with {proc.returncode}; see {work}/hand.log")
        try:
            return json.loads((state_dir / "state.json").read_text())["status"] == "ready"
        except (OSError, ValueError, KeyError):
            return False

    wait_for(ready, 120, "jlservice run to be ready", interval=0.005)
    took = time.monotonic() - began
    stop(proc, 45)
    return took


def exposure(work: Path) -> dict[str, float]:
    out = {}
    env = {"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(work / "xdg")}
    (work / "xdg").mkdir(mode=0o700, exist_ok=True)
    for source, name, scope in (
        ("jlservice.service", "jlservice.service", "--system"),
        ("jlservice@.service", "jlservice@alice.service", "--system"),
        ("user/jlservice.service", "jlservice.service", "--user"),
    ):
        where = work / "units" / scope.strip("-")
        where.mkdir(parents=True, exist_ok=True)
        text = unit_files.template(source)
        (where / name).write_text(unit_files.render_unit(text, [JLSERVICE]))
        report = subprocess.run(
            ["systemd-analyze", scope, "security", "--offline=true", "--no-pager", name],
            cwd=where,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        found = re.search(r"Overall exposure level for \S+: ([\d.]+)", report)
        if found is None:
            raise BenchError(f"systemd-analyze security said nothing about {source}")
        out[source] = float(found.group(1))
    return out


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    user = "jlsbench" + os.urandom(3).hex()
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
    try:
        session.work.chmod(0o755)
        return measure_as(session, user)
    finally:
        subprocess.run(["userdel", "--remove", user], capture_output=True)


def measure_as(session: Session, user: str) -> tuple[list[Metric], dict[str, Any]]:
    box = Sandbox(session.work / "sandbox")
    try:
        box.boot()
        port = free_port()
        box.run(JLSERVICE, "install", "--user", user, "--port", str(port))
        box.log_to_file("jlservice.service")
        box.systemctl("enable", "jlservice")
        config_text = (box.root / "etc-jlservice" / "jlservice.toml").read_text()
        hand_config = config_text.replace(f"port = {port}", f"port = {free_port()}")
        started, plain, reboots = [], [], []
        for run in range(session.args.runs + 1):  # the first of each is an untimed warm-up
            t0 = time.monotonic()
            box.systemctl("start", "jlservice")
            took = time.monotonic() - t0
            token = box.run(JLSERVICE, "token").stdout.strip()
            if not answers(port, token):
                raise BenchError("systemctl start returned but JupyterLab does not answer")
            hand = by_hand(session, hand_config, run)
            t0 = time.monotonic()
            box.crash()
            box.boot()
            wait_for(lambda t=token: answers(port, t), 120, "the service after the reboot", 0.01)
            reboot = time.monotonic() - t0
            box.systemctl("stop", "jlservice")
            if run:
                started.append(took)
                plain.append(hand)
                reboots.append(reboot)
            say(f"run {run}: start {took:.3f} s, by hand {hand:.3f} s, reboot {reboot:.3f} s")
    finally:
        box.close()
    scores = exposure(session.work)
    metrics = [
        Metric(
            "systemctl start -> returns (READY=1)",
            "s",
            started,
            baseline="jlservice run by hand -> ready",
            baseline_samples=plain,
            goal=1.05,
        ),
        Metric(
            "reboot (kill PID 1) -> token answers",
            "s",
            reboots,
            note="boot of the sandbox's systemd + start of the enabled unit",
        ),
    ]
    for source, value in scores.items():
        metrics.append(
            Metric(
                f"exposure {source}",
                "score",
                [value],
                goal=5.0 if not source.startswith("user/") else None,
                goal_on="median",
                note="systemd-analyze security --offline=true (0 = locked down, 10 = exposed)",
            )
        )
    return metrics, {"exposure": scores}


def main(argv: list[str] | None = None) -> int:
    args = parse(options(__doc__, runs=7, lab=False), argv, "jlservice", "python")
    if os.geteuid() != 0:
        print("bench/systemd.py needs root (namespaces, mounts, useradd)", file=sys.stderr)
        return 1
    if why := available():
        print(f"bench/systemd.py: {why}", file=sys.stderr)
        return 1
    return run("bench/systemd.py", "jlservice under systemd", args, args.runs, measure)


if __name__ == "__main__":
    sys.exit(main())
