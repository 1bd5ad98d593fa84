"""Each notebook's resources: scrape latency and sampler CPU with 64 kernels on 8 fake GPUs,
the time from a kernel's OOM kill to jlservice's log line and metric, and `jlservice top`.

    python -m bench.resources [--kernels 64] [--scrapes 1000] [--cpu-seconds 60] [--ooms 3]

As root: the OOM kills happen in a memory cgroup of the bench's own around `jlservice run`
(the kernel log path: /dev/kmsg, read at once). What each row means: README, Measurements.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any

from helpers.cgroup import own_cgroup
from helpers.metrics import (
    metrics_section,
    metrics_url,
    open_notebook,
    scrape,
    series,
    value,
    wait_scrape,
)
from helpers.procs import wait_for
from helpers.service import execute_request

from .lab import Lab
from .metrics import CPU_GOAL, OFF, busy_machine, cpu_rounds, scrape_round
from .report import Metric, say, timed_ms
from .session import BenchError, Session, options, parse, run

MIB = 2**20
KILLS = "jlservice_kernel_oom_kills_total"
ROUND = "jlservice_sample_duration_seconds"


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    rows = _loaded(session)
    if os.geteuid() == 0:
        rows += _ooms(session)
    else:
        session.warnings.append("not root: no OOM kills measured (needs a memory cgroup)")
    return rows, {"kernels": session.args.kernels}


def _loaded(session: Session) -> list[Metric]:
    args = session.args
    lab = Lab(session, metrics=metrics_section(interval=5.0))
    url = busy_machine(session, lab, args.kernels)
    what = f"{args.kernels} notebooks in /metrics"
    rss = "jlservice_kernel_resident_memory_bytes"
    s = wait_scrape(url, lambda s: len(series(s, rss)) == args.kernels, what, timeout=120)
    port = int(lab.sections["metrics"]["listen"].rpartition(":")[2])
    p50, p99 = zip(*(scrape_round(port, args.scrapes) for _ in range(args.rounds)), strict=True)
    rounds = []
    for _ in range(10):  # the sampler's own timing of its rounds (HTTP, /proc, NVML)
        last = value(s, ROUND)
        s = wait_scrape(url, lambda s, last=last: value(s, ROUND) not in (None, last), "a round")
        rounds.append(value(s, ROUND) * 1000)
    top = _top(lab)
    cpu = cpu_rounds(lab, args.cpu_rounds, args.cpu_seconds)
    lab.shutdown()
    kernels, off = f"{args.kernels} real kernels, 8 fake GPUs", (OFF, cpu["off supervisor"])
    return [
        Metric("scrape p50", "ms", list(p50), note=kernels),
        Metric("scrape p99", "ms", list(p99), "<= 5", kernels),
        Metric("sampler round", "ms", rounds, note="api/kernels+sessions, one /proc pass, NVML"),
        Metric("supervisor CPU, interval 5 s", "%", cpu["5 supervisor"], CPU_GOAL, vs=off),
        Metric("supervisor CPU, interval 1 s", "%", cpu["1 supervisor"], vs=off),
        *top,
    ]


def _top(lab: Lab) -> list[Metric]:
    """One refresh of `jlservice top` (read notebooks.json, build and render the table) in
    this process, and `jlservice top --once` as a command (Python and rich imported)."""
    from rich.console import Console

    from jlservice import config
    from jlservice.cli import top

    service = config.load_service(lab.config_path)

    def refresh() -> None:
        Console(file=io.StringIO(), width=200).print(top.view(service, "m"))

    def once() -> None:
        if lab.cli("top", "--once").returncode != 0:
            raise BenchError("jlservice top --once failed")

    return [
        Metric("jlservice top: one refresh", "ms", timed_ms(refresh, 50), note="redrawn every 1 s"),
        Metric("jlservice top --once", "ms", timed_ms(once, 5), note="a new process: Python, rich"),
    ]


def _ooms(session: Session) -> list[Metric]:
    """Kill a kernel by the OOM killer `--ooms` times; from its death (seen on its pidfd) to
    the warning in the log and to jlservice_kernel_oom_kills_total."""
    to_log, to_metric = [], []
    with own_cgroup() as cgroup:
        lab = Lab(session, "oom", metrics=metrics_section())
        lab.start(wait=False, wrap=cgroup.wrap())
        token = lab.wait_ready()["token"]
        for i in range(session.args.ooms):
            name = f"oom {i}.ipynb"
            kernel_id, pid = open_notebook(lab, token, name)
            cgroup.limit(cgroup.usage() + 200 * MIB)
            offset, fd = lab.log_size(), os.pidfd_open(pid)
            ws = lab.channels(token, kernel_id, 30)  # left open: the answer never comes
            ws.send(json.dumps(execute_request("b = b'x' * (400 << 20)")))
            if not select.select([fd], [], [], 60)[0]:
                raise BenchError("the kernel was not OOM-killed within 60 s")
            died = time.monotonic()
            os.close(fd)
            ws.close()
            if (took := _within(functools.partial(_logged, lab, offset), died, 0.001)) is None:
                session.warnings.append(f"OOM kill {i + 1}: no kernel_oom_killed within 30 s")
                break
            to_log.append(took)
            labels = {"kernel_id": kernel_id, "notebook": name}
            if (took := _within(functools.partial(_counted, lab, labels), died, 0.005)) is None:
                session.warnings.append(f"OOM kill {i + 1}: {KILLS} not 1 within 30 s")
                break
            to_metric.append(took)
            say(f"  OOM kill {i + 1}: log {to_log[-1]:.1f} ms, metric {to_metric[-1]:.1f} ms")
            cgroup.limit(-1 if cgroup.memory.version == 1 else 2**62)
            lab.api("DELETE", f"api/kernels/{kernel_id}", token)
        lab.shutdown()
    note = f"memory cgroup v{cgroup.memory.version} around jlservice; /dev/kmsg"
    return [
        Metric("OOM kill → log line", "ms", to_log, note=note),
        Metric("OOM kill → metric", "ms", to_metric, note="scraped every 5 ms"),
    ]


def _logged(lab: Lab, offset: int) -> bool:
    return any(e.get("event") == "kernel_oom_killed" for e in lab.log_events(offset))


def _counted(lab: Lab, labels: dict[str, str]) -> bool:
    return (value(scrape(metrics_url(lab)), KILLS, **labels) or 0) >= 1


def _within(done: Callable[[], bool], since: float, poll: float) -> float | None:
    """Milliseconds from `since` until `done()` held, checked every `poll` s; None when it
    did not within 30 s of `since`."""
    with contextlib.suppress(AssertionError):
        wait_for(done, since + 30 - time.monotonic(), "", poll)
        return (time.monotonic() - since) * 1000
    return None


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__)
    p.add_argument("--kernels", type=int, default=64, help="notebooks with a kernel (64)")
    p.add_argument("--rounds", type=int, default=3, help="scrape rounds (default 3)")
    p.add_argument("--scrapes", type=int, default=1000, help="scrapes a round (default 1000)")
    p.add_argument("--cpu-rounds", type=int, default=3, help="CPU windows of each kind (3)")
    p.add_argument("--cpu-seconds", type=float, default=60, help="seconds a window (60)")
    p.add_argument("--ooms", type=int, default=3, help="kernels OOM-killed (default 3)")
    args = parse(p, argv, "jlservice", "python")
    if min(args.kernels, args.rounds, args.scrapes, args.cpu_rounds, args.ooms) < 1:
        p.error("every count must be positive")
    return run("bench/resources.py", "jlservice resources benchmark", args, measure, args.rounds)


if __name__ == "__main__":
    sys.exit(main())
