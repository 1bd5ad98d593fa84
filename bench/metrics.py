"""Metrics benchmark: scrape latency and the sampler's CPU cost, 8 fake GPUs, 32 kernels.

    python -m bench.metrics [--rounds 3] [--scrapes 1000] [--cpu-seconds 60]

The fake libnvidia-ml.so.1 of tests/nvml and real python3 kernels: GET /metrics latency vs
an empty prometheus_client registry; the sampler's CPU cost at interval 5 s and 1 s vs
metrics off. How each is measured: bench/README.md.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil
from helpers.metrics import kernel_pid, scrape_text, series, wait_scrape
from helpers.procs import free_port
from nvml.fakenvml import FULL, GIB, FakeNvml, Gpu

from .lab import HOST, Lab, http_ok
from .report import Metric, say
from .session import BenchError, Session, options, parse, run

GPUS = 8


def scrape_round(port: int, count: int) -> tuple[float, float]:
    """p50 and p99 of `count` scrapes (a new connection each), in ms."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        ok = http_ok(port, "/metrics", timeout=60)
        times.append((time.perf_counter() - start) * 1000)
        if not ok:
            raise BenchError(f"GET http://{HOST}:{port}/metrics did not answer 200")
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def open_notebooks(lab: Lab, token: str, count: int) -> list[int]:
    """`count` notebooks with a real kernel each; their kernels' pids."""
    ids = []
    for i in range(count):
        name = f"notebook {i:02d}.ipynb"
        (lab.notebooks / name).write_text(
            '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
        )
        body = {"path": name, "name": name, "type": "notebook", "kernel": {"name": "python3"}}
        response = lab.api("POST", "api/sessions", token, json=body)
        if response.status_code >= 300:
            raise BenchError(f"api/sessions: HTTP {response.status_code} {response.text[:200]}")
        ids.append(response.json()["kernel"]["id"])
    return [kernel_pid(lab, kernel_id) for kernel_id in ids]


def busy_gpus(kernels: list[int], outsiders: list[int]) -> list[Gpu]:
    """GPUS GPUs that report every value; GPU i holds kernels i, i + GPUS, … (1 GiB each)
    and outsider i (0.5 GiB), a process that is no kernel."""
    return [
        Gpu(
            f"GPU-{i:08x}-bench",
            **FULL,
            processes=[*((pid, GIB) for pid in kernels[i::GPUS]), (outsiders[i], GIB // 2)],
        )
        for i in range(GPUS)
    ]


def busy_machine(session: Session, lab: Lab, fake: FakeNvml, token: str, count: int) -> None:
    """`count` notebooks with a real kernel each and GPUS processes that are no kernel, all
    holding fake GPU memory (busy_gpus)."""
    say(f"opening {count} notebooks with a kernel each")
    kernels = open_notebooks(lab, token, count)
    outsiders = [
        session.spawn(["sleep", "3600"], lab.root / "sleep.log", lab.env) for _ in range(GPUS)
    ]
    fake.write(busy_gpus(kernels, [p.pid for p in outsiders]))


def cpu_window(pids: list[int], seconds: float) -> list[float]:
    """% of one core each process used over `seconds`."""
    procs = [psutil.Process(pid) for pid in pids]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(seconds)
    return [
        (sum(p.cpu_times()[:2]) - b) / seconds * 100 for p, b in zip(procs, before, strict=True)
    ]


def nvidia_smi_ms(runs: int) -> list[float] | None:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    query = (
        "--query-gpu=index,uuid,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"
    )
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([tool, query, "--format=csv,noheader"], capture_output=True, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    args = session.args
    (session.work / "nvml").mkdir()
    fake = FakeNvml(session.work / "nvml")
    lab = Lab(session)
    lab.env.update(fake.env())
    metrics_port = free_port()
    url = f"http://{HOST}:{metrics_port}/metrics"

    def configure(reload: bool, **metrics: object) -> None:
        lab.sections["metrics"] = {"listen": f"{HOST}:{metrics_port}", **metrics}
        lab.write_config()
        if reload and (done := lab.cli("reload")).returncode != 0:
            raise BenchError(f"jlservice reload: {done.stderr.strip()}")

    configure(False, interval=5.0)
    lab.timed_start()
    busy_machine(session, lab, fake, lab.current["token"], args.kernels)
    configure(True, interval=1.0)
    wait_scrape(
        url,
        lambda s: len(series(s, "jlservice_kernel_gpu_memory_bytes")) == args.kernels,
        f"{args.kernels} notebooks' GPU memory in /metrics",
        timeout=60,
    )

    from prometheus_client import CollectorRegistry, start_http_server

    empty_port = free_port()
    empty, _thread = start_http_server(empty_port, HOST, registry=CollectorRegistry())
    p50, p99, base50, base99 = [], [], [], []
    for i in range(args.rounds):
        b = scrape_round(empty_port, args.scrapes)
        s = scrape_round(metrics_port, args.scrapes)
        base50.append(b[0]), base99.append(b[1]), p50.append(s[0]), p99.append(s[1])
        say(
            f"  scrape round {i + 1}/{args.rounds}: p50 {s[0]:.2f} ms, p99 {s[1]:.2f} ms "
            f"(empty registry: {b[0]:.2f} / {b[1]:.2f} ms)"
        )
    empty.shutdown()
    size = len(scrape_text(url).encode())

    assert lab.proc is not None
    pids = [lab.proc.pid, lab.lab_pid]
    windows: dict[str, list[list[float]]] = {"off": [], "5": [], "1": []}
    for i in range(args.cpu_rounds):
        for name, settings in (
            ("off", {"enabled": False}),
            ("5", {"interval": 5.0}),
            ("1", {"interval": 1.0}),
        ):
            configure(True, **settings)
            time.sleep(1.0)
            windows[name].append(cpu_window(pids, args.cpu_seconds))
            say(
                f"  cpu round {i + 1}/{args.cpu_rounds} [{name}]: supervisor "
                f"{windows[name][-1][0]:.3f} %, JupyterLab {windows[name][-1][1]:.3f} %"
            )
    lab.shutdown()

    def sup(name: str) -> list[float]:
        return [w[0] for w in windows[name]]

    def jl(name: str) -> list[float]:
        return [w[1] for w in windows[name]]

    off = "[metrics] enabled = false"
    rows = [
        Metric("scrape p50", "ms", p50, "empty registry", base50, note=f"{size} bytes per scrape"),
        Metric(
            "scrape p99",
            "ms",
            p99,
            "empty registry",
            base99,
            5.0,
            "median",
            note=f"{GPUS} fake GPUs, {args.kernels} real kernels",
        ),
        Metric(
            "supervisor CPU, interval 5 s",
            "%",
            sup("5"),
            off,
            sup("off"),
            0.5,
            "difference",
            note="goal on the difference to metrics off",
        ),
        Metric("supervisor CPU, interval 1 s", "%", sup("1"), off, sup("off")),
        Metric(
            "JupyterLab CPU, interval 5 s",
            "%",
            jl("5"),
            off,
            jl("off"),
            note="answering api/kernels + api/sessions each interval",
        ),
        Metric("JupyterLab CPU, interval 1 s", "%", jl("1"), off, jl("off")),
    ]
    smi = nvidia_smi_ms(args.rounds * 5)
    if smi is None:
        lab.warn("nvidia-smi is not installed here: no nvidia-smi --query-gpu baseline")
    else:
        rows.append(Metric("nvidia-smi --query-gpu", "ms", smi))
    return rows, {}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__)
    p.add_argument("--rounds", type=int, default=3, help="scrape rounds (default 3)")
    p.add_argument("--scrapes", type=int, default=1000, help="scrapes a round (default 1000)")
    p.add_argument("--kernels", type=int, default=32, help="notebooks with a kernel (32)")
    p.add_argument("--cpu-rounds", type=int, default=3, help="CPU windows of each kind (3)")
    p.add_argument("--cpu-seconds", type=float, default=60, help="seconds a window (60)")
    args = parse(p, argv, "jlservice", "python")
    if min(args.rounds, args.scrapes, args.kernels, args.cpu_rounds) < 1:
        p.error("--rounds, --scrapes, --kernels and --cpu-rounds must be positive")
    title = "jlservice metrics benchmark"
    return run("bench/metrics.py", title, args, args.rounds * 2, measure)


if __name__ == "__main__":
    sys.exit(main())
