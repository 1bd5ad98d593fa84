"""Each notebook's resources: scrape latency and sampler CPU with 64 kernels on 8 fake GPUs,
the time from a kernel's OOM kill to jlservice's log line and metric, and `jlservice top`.

    python -m bench.resources [--kernels 64] [--scrapes 1000] [--cpu-seconds 60] [--ooms 3]

As root: the OOM kills happen in a memory cgroup of the bench's own around `jlservice run`
(the kernel log path: /dev/kmsg, read at once). What each row means: README, Measurements.
"""

from __future__ import annotations

import functools
import io
import json
import os
import select
import sys
import time
from typing import Any

from helpers.cgroup import own_cgroup
from helpers.metrics import (
    EMPTY_NOTEBOOK,
    kernel_pid,
    metrics_url,
    scrape,
    series,
    value,
    wait_scrape,
)
from helpers.procs import free_port

from .lab import HOST, Lab
from .metrics import busy_machine, cpu_window, scrape_round
from .report import Metric, say
from .session import BenchError, Session, options, parse, run

MIB = 2**20
KILLS = "jlservice_kernel_oom_kills_total"
ROUND = "jlservice_sample_duration_seconds"


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    args = session.args
    rows = _loaded(session)
    if os.geteuid() == 0:
        rows += _ooms(session)
    else:
        session.warnings.append("not root: no OOM kills measured (needs a memory cgroup)")
    return rows, {"kernels": args.kernels}


def _loaded(session: Session) -> list[Metric]:
    args = session.args
    lab = Lab(session)
    listen = f"{HOST}:{free_port()}"

    def configure(reload: bool, **metrics: object) -> None:
        lab.sections["metrics"] = {"listen": listen, **metrics}
        lab.write_config()
        if reload and (done := lab.cli("reload")).returncode != 0:
            raise BenchError(f"jlservice reload: {done.stderr.strip()}")

    configure(False, interval=5.0)
    url = busy_machine(session, lab, args.kernels)
    s = wait_scrape(
        url,
        lambda s: len(series(s, "jlservice_kernel_resident_memory_bytes")) == args.kernels,
        f"{args.kernels} notebooks in /metrics",
        timeout=120,
    )
    port = int(listen.rpartition(":")[2])
    p50, p99 = zip(*(scrape_round(port, args.scrapes) for _ in range(args.rounds)), strict=True)
    rounds = []
    for _ in range(10):  # the sampler's own timing of its rounds (HTTP, /proc, NVML)
        s = _next_round(url, value(s, ROUND))
        rounds.append(value(s, ROUND) * 1000)
    top = _top(session, lab)
    assert lab.proc is not None
    cpu: dict[str, list[float]] = {"off": [], "5": [], "1": []}
    for i in range(args.cpu_rounds):
        for name, settings in (("off", {"enabled": False}), ("5", {"interval": 5.0}), ("1", {})):
            configure(True, **(settings or {"interval": 1.0}))
            time.sleep(1.0)
            cpu[name].append(cpu_window([lab.proc.pid], args.cpu_seconds)[0])
            say(f"  cpu round {i + 1} [{name}]: supervisor {cpu[name][-1]:.3f} %")
    lab.shutdown()
    kernels = f"{args.kernels} real kernels, 8 fake GPUs"
    off = "[metrics] enabled = false"
    return [
        Metric("scrape p50", "ms", list(p50), note=kernels),
        Metric("scrape p99", "ms", list(p99), goal=5.0, goal_on="median", note=kernels),
        Metric("sampler round", "ms", rounds, note="api/kernels+sessions, one /proc pass, NVML"),
        Metric("supervisor CPU, interval 5 s", "%", cpu["5"], off, cpu["off"], 0.5, "difference"),
        Metric("supervisor CPU, interval 1 s", "%", cpu["1"], off, cpu["off"]),
        *top,
    ]


def _next_round(url: str, last: float | None) -> Any:
    return wait_scrape(url, lambda s: value(s, ROUND) not in (None, last), "the next round")


def _top(session: Session, lab: Lab) -> list[Metric]:
    """One refresh of `jlservice top` (read notebooks.json, build and render the table) in
    this process, and `jlservice top --once` as a command (Python and rich imported)."""
    from rich.console import Console

    from jlservice import config
    from jlservice.cli import top

    service = config.load_service(lab.config_path)
    refresh = []
    for _ in range(50):
        began = time.perf_counter()
        Console(file=io.StringIO(), width=200).print(top.view(service, "m"))
        refresh.append((time.perf_counter() - began) * 1000)
    once = []
    for _ in range(5):
        began = time.perf_counter()
        if lab.cli("top", "--once").returncode != 0:
            raise BenchError("jlservice top --once failed")
        once.append((time.perf_counter() - began) * 1000)
    return [
        Metric("jlservice top: one refresh", "ms", refresh, note="redrawn every 1 s"),
        Metric("jlservice top --once", "ms", once, note="a new process: Python, rich"),
    ]


def _ooms(session: Session) -> list[Metric]:
    """Kill a kernel by the OOM killer `--ooms` times; from its death (seen on its pidfd) to
    the warning in the log and to jlservice_kernel_oom_kills_total."""
    to_log, to_metric = [], []
    with own_cgroup() as cgroup:
        lab = Lab(session, "oom", metrics={"listen": f"{HOST}:{free_port()}"})
        lab.start(wait=False, wrap=cgroup.wrap())
        token = lab.wait_ready()["token"]
        for i in range(session.args.ooms):
            name = f"oom {i}.ipynb"
            kernel_id, pid = _open(lab, token, name)
            cgroup.limit(cgroup.usage() + 200 * MIB)
            offset, fd = lab.log_size(), os.pidfd_open(pid)
            ws = _allocate(lab, token, kernel_id)
            if not select.select([fd], [], [], 60)[0]:
                raise BenchError("the kernel was not OOM-killed within 60 s")
            died = time.monotonic()
            os.close(fd)
            ws.close()
            if not _until(functools.partial(_logged, lab, offset), died, 0.001):
                session.warnings.append(f"OOM kill {i + 1}: no kernel_oom_killed within 30 s")
                break
            to_log.append((time.monotonic() - died) * 1000)
            labels = {"kernel_id": kernel_id, "notebook": name}
            if not _until(functools.partial(_killed, lab, labels), died, 0.005):
                session.warnings.append(f"OOM kill {i + 1}: {KILLS} not 1 within 30 s")
                break
            to_metric.append((time.monotonic() - died) * 1000)
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


def _killed(lab: Lab, labels: dict[str, str]) -> bool:
    return (value(scrape(metrics_url(lab)), KILLS, **labels) or 0) >= 1


def _until(done: Any, since: float, poll: float, timeout: float = 30.0) -> bool:
    """Whether `done()` came true within `timeout` s of `since`, checked every `poll` s."""
    while not done():
        if time.monotonic() - since > timeout:
            return False
        time.sleep(poll)
    return True


def _open(lab: Lab, token: str, name: str) -> tuple[str, int]:
    (lab.notebooks / name).write_text(json.dumps(EMPTY_NOTEBOOK))
    body = {"path": name, "name": name, "type": "notebook", "kernel": {"name": "python3"}}
    kernel_id = lab.api("POST", "api/sessions", token, json=body).json()["kernel"]["id"]
    return kernel_id, kernel_pid(lab, kernel_id)


def _allocate(lab: Lab, token: str, kernel_id: str) -> Any:
    """Send a cell that allocates 400 MiB; the websocket, open (the answer never comes)."""
    import uuid

    import websocket

    url = lab.base.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
    ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=30)
    header = {"msg_id": uuid.uuid4().hex, "username": "bench", "session": uuid.uuid4().hex,
              "msg_type": "execute_request", "version": "5.3"}  # fmt: skip
    content = {"code": "b = b'x' * (400 << 20)", "silent": False, "store_history": False,
               "user_expressions": {}, "allow_stdin": False}  # fmt: skip
    msg = {"header": header, "parent_header": {}, "metadata": {}, "channel": "shell"}
    ws.send(json.dumps({**msg, "content": content}))
    return ws


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
    return run("bench/resources.py", "jlservice resources benchmark", args, args.rounds, measure)


if __name__ == "__main__":
    sys.exit(main())
