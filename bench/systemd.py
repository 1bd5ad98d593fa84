"""systemd benchmark: the installed unit under a real systemd (PID 1 of private namespaces).

    /opt/jlservice-test-venv/bin/python bench/systemd.py [--runs 7] [--json PATH]   (as root)

Boots the same sandbox as tests/systemd (see tests/systemd/sandbox.py), creates a throw-away
user, runs `jlservice install --user … --port …` and `systemctl enable`, then, alternating:

1. `systemctl start jlservice` (returns at READY=1) vs the same configuration run by hand,
   `jlservice run --config F` spawned -> state.json says ready. Goal: ratio <= 1.05 (systemd
   should add nothing measurable).
2. "Reboot": SIGKILL of PID 1 -> the sandbox boots again -> the enabled service answers
   `GET api/status` with the old token.
3. `systemd-analyze security --offline=true` exposure of each shipped unit.

Every process started is ended by PID. Exit status 1 when something fails to start or
answer, 3 with --strict when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# bench/ is a directory of scripts; the sandbox is the one the tests use
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "systemd"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, child_env, free_port, session, wait_for
from _report import Metric, announce, finish
from sandbox import JLSERVICE, Sandbox, available

from jlservice.admin import unit_files


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def answers(port: int, token: str) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def by_hand(procs, work: Path, config_text: str, run: int) -> float:
    """spawn -> ready of `jlservice run` with the same [lab] as the unit, own state dirs."""
    config = work / f"by-hand-{run}.toml"
    state_dir = work / f"by-hand-{run}-state"
    config.write_text(
        config_text
        + f'\n[service]\nstate_dir = "{state_dir}"\nruntime_dir = "{work}/by-hand-{run}-run"\n'
    )
    began = time.monotonic()
    proc = procs.spawn([JLSERVICE, "run", "--config", str(config)], child_env(), work / "hand.log")

    def ready() -> bool:
        if proc.poll() is not None:
            raise BenchError(f"jlservice run exited with {proc.returncode}; see {work}/hand.log")
        try:
            return json.loads((state_dir / "state.json").read_text())["status"] == "ready"
        except (OSError, ValueError, KeyError):
            return False

    wait_for(ready, 120, "jlservice run to be ready", interval=0.005)
    took = time.monotonic() - began
    procs.stop(proc)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/systemd.py needs root (namespaces, mounts, useradd)", file=sys.stderr)
        return 1
    if why := available():
        print(f"bench/systemd.py: {why}", file=sys.stderr)
        return 1
    began = time.time()
    machine = announce("jlservice under systemd", sys.executable, os.environ, args.runs)
    user = "jlsbench" + os.urandom(3).hex()
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
    try:
        with session(__file__, args.keep) as (procs, work):
            work.chmod(0o755)
            metrics, extra = measure(procs, work, user, args)
    except BenchError as exc:
        print(f"bench/systemd.py: {exc}", file=sys.stderr)
        return 1
    finally:
        subprocess.run(["userdel", "--remove", user], capture_output=True)
    return finish(__file__, began, metrics, [], args, {"machine": machine, **extra})


def measure(procs, work: Path, user: str, args) -> tuple[list[Metric], dict]:
    box = Sandbox(work / "sandbox")
    try:
        box.boot()
        port = free_port()
        box.run(JLSERVICE, "install", "--user", user, "--port", str(port))
        box.log_to_file("jlservice.service")
        box.systemctl("enable", "jlservice")
        config_text = (box.root / "etc-jlservice" / "jlservice.toml").read_text()
        hand_config = config_text.replace(f"port = {port}", f"port = {free_port()}")
        started, plain, reboots = [], [], []
        for run in range(args.runs + 1):  # the first of each is an untimed warm-up
            t0 = time.monotonic()
            box.systemctl("start", "jlservice")
            took = time.monotonic() - t0
            token = box.run(JLSERVICE, "token").stdout.strip()
            if not answers(port, token):
                raise BenchError("systemctl start returned but JupyterLab does not answer")
            hand = by_hand(procs, work, hand_config, run)
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
    scores = exposure(work)
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


if __name__ == "__main__":
    sys.exit(main())
