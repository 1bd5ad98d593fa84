"""Rule evaluation: the shipped Prometheus rules on a jlservice with 8 fake GPUs and 32 notebooks.

    python -m bench.rules [--kernels 32] [--seconds 60] [--interval 1]

One `jlservice run` (the fake libnvidia-ml.so.1 of tests/nvml, real python3 kernels, a
bearer token) scraped by Debian's Prometheus with the shipped job and
etc/prometheus/jlservice-rules.yml: each rule group's evaluation time as Prometheus reports
it (api/v1/rules evaluationTime), every evaluation over --seconds. How: bench/README.md.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

from helpers.procs import free_port, wait_for
from helpers.prometheus import RULES, Prometheus, config_for, tool

from .lab import HOST, Lab
from .metrics import GPUS, busy_machine
from .report import Metric, say
from .session import BenchError, Session, options, parse, run


def evaluations(prom: Prometheus, seconds: float, interval: float) -> dict[str, Any]:
    """Every evaluation seen over `seconds`: per group its times (ms), per rule its times."""
    groups: dict[str, dict[str, float]] = {}  # group -> lastEvaluation -> ms
    rules: dict[str, list[float]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for group in prom.rule_groups():
            seen = groups.setdefault(group["name"], {})
            if group["lastEvaluation"] in seen:
                continue
            seen[group["lastEvaluation"]] = group["evaluationTime"] * 1000
            for rule in group["rules"]:
                if rule["health"] != "ok":
                    raise BenchError(f"rule {rule['name']}: {rule.get('lastError')}")
                rules.setdefault(rule["name"], []).append(rule["evaluationTime"] * 1000)
        time.sleep(interval / 3)
    return {"groups": {g: list(t.values()) for g, t in groups.items()}, "rules": rules}


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    args = session.args
    if shutil.which("prometheus") is None:
        raise BenchError("prometheus is not installed: apt-get install prometheus (Debian)")
    token = secrets.token_hex(16)
    token_file = session.work / "metrics.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    listen = f"{HOST}:{free_port()}"
    lab = Lab(session, metrics={"listen": listen, "bearer_token_file": str(token_file)})
    busy_machine(session, lab, args.kernels, token)

    directory = session.work / "prometheus"
    directory.mkdir()
    prom = Prometheus(directory, config_for(directory, listen, token, args.interval, [RULES]))
    session.spawn(prom.command(), prom.log)
    prom.wait_ready()
    wait_for(
        lambda: prom.query(
            'instance_notebook:jlservice_kernel_gpu_memory_bytes:sum{job="jlservice"}'
        ),
        60,
        "the recording rules to have the notebooks",
    )
    (count,) = prom.query('count({job="jlservice"})')
    scraped = int(float(count["value"][1]))
    say(f"{scraped} series scraped; sampling evaluations for {args.seconds:g} s")
    seen = evaluations(prom, args.seconds, args.interval)
    lab.shutdown()

    rows = [Metric(f"group {name}", "ms", times) for name, times in seen["groups"].items()]
    every = sum(row.figures()["median"] for row in rows)
    rows[0].note = f"all {len(rows)} groups: {every:.2f} ms an evaluation (sum of medians)"
    costliest = sorted(seen["rules"].items(), key=lambda item: -statistics.median(item[1]))
    rows += [Metric(f"rule {name}", "ms", times) for name, times in costliest[:3]]
    version = subprocess.run(
        [tool("prometheus"), "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    say(f"{scraped} series from one jlservice ({GPUS} GPUs, {args.kernels} notebooks); {version}")
    return rows, {"series": scraped, "prometheus": version, "evaluations": seen}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__)
    p.add_argument("--kernels", type=int, default=32, help="notebooks with a kernel (32)")
    p.add_argument("--seconds", type=float, default=60, help="seconds of evaluations (60)")
    p.add_argument(
        "--interval", type=float, default=1.0, help="scrape and evaluation interval, s (1)"
    )
    args = parse(p, argv, "jlservice", "python")
    if args.kernels < 1 or args.seconds <= 0 or args.interval < 0.1:
        p.error("--kernels and --seconds must be positive, --interval at least 0.1")
    runs = int(args.seconds / args.interval)
    return run("bench/rules.py", "jlservice rule evaluation benchmark", args, measure, runs)


if __name__ == "__main__":
    sys.exit(main())
