"""Metrics benchmark: scrape latency and the sampler's CPU cost, 8 fake GPUs, 32 kernels.

    python -m bench.metrics [--rounds 3] [--scrapes 1000] [--cpu-seconds 60]

The fake libnvidia-ml.so.1 of tests/nvml and real python3 kernels: GET /metrics latency vs
an empty prometheus_client registry; the sampler's CPU cost at interval 5 s and 1 s vs
metrics off. How each is measured: bench/README.md.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import psutil
from helpers.metrics import (
    metrics_section,
    metrics_url,
    open_notebook,
    scrape_text,
    series,
    wait_scrape,
)
from helpers.procs import free_port
from nvml.fakenvml import FULL, GIB, FakeNvml, Gpu

from .lab import HOST, Lab, http_ok
from .report import Metric, Runs, cpu_percent, percentile, say
from .session import BenchError, Session, options, parse, run

GPUS = 8
OFF = "[metrics] enabled = false"
CPU_GOAL = "median - baseline <= 0.5"  # the sampler at interval 5 s, % of one core


def busy_machine(session: Session, lab: Lab, kernels: int, token: str | None = None) -> str:
    """Start `lab` with the fake NVML: `kernels` notebooks with a real kernel each and GPUS
    processes that are no kernel, all holding fake GPU memory; GPU i holds kernels i,
    i + GPUS, … (1 GiB each) and outsider i (0.5 GiB). Waits until /metrics (at
    [metrics] listen, `token` its bearer token) shows them; its URL."""
    (session.work / "nvml").mkdir()
    fake = FakeNvml(session.work / "nvml")
    lab.env.update(fake.env())
    lab.timed_start()
    say(f"opening {kernels} notebooks with a kernel each")
    api = lab.current["token"]
    pids = [open_notebook(lab, api, f"notebook {i:02d}.ipynb")[1] for i in range(kernels)]
    log = lab.root / "sleep.log"
    outsiders = [session.spawn(["sleep", "3600"], log, lab.env).pid for _ in range(GPUS)]
    held = [[(pid, GIB) for pid in pids[i::GPUS]] + [(outsiders[i], GIB // 2)] for i in range(GPUS)]
    fake.write([Gpu(f"GPU-{i:08x}-bench", **FULL, processes=p) for i, p in enumerate(held)])
    url, memory = metrics_url(lab), "jlservice_kernel_gpu_memory_bytes"
    shown = f"{kernels} notebooks' GPU memory in /metrics"
    wait_scrape(url, lambda s: len(series(s, memory)) == kernels, shown, 120, token)
    return url


def set_metrics(lab: Lab, **values: object) -> None:
    """[metrics] as `values` (on the same listen address), applied by `jlservice reload`."""
    lab.sections["metrics"] = {"listen": lab.sections["metrics"]["listen"], **values}
    lab.write_config()
    if (done := lab.cli("reload")).returncode != 0:
        raise BenchError(f"jlservice reload: {done.stderr.strip()}")


def scrape_round(port: int, count: int) -> tuple[float, float]:
    """p50 and p99 of `count` scrapes (a new connection each), in ms."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        if not http_ok(port, "/metrics", timeout=60):
            raise BenchError(f"GET http://{HOST}:{port}/metrics did not answer 200")
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), percentile(times, 99)


def cpu_rounds(lab: Lab, rounds: int, seconds: float) -> Runs:
    """% of one core the supervisor and JupyterLab used over `seconds` windows with
    [metrics] off, at interval 5 s and at 1 s, switched by live reloads; `rounds` of each."""
    assert lab.proc is not None
    procs = {"supervisor": psutil.Process(lab.proc.pid), "lab": psutil.Process(lab.lab_pid)}
    cpu = Runs("cpu round", rounds)
    for _ in range(rounds):
        values = {}
        for name, settings in (("off", {"enabled": False}), ("5", {"interval": 5.0}), ("1", {})):
            set_metrics(lab, **(settings or {"interval": 1.0}))
            time.sleep(1.0)
            values.update({f"{name} {k}": v for k, v in cpu_percent(procs, seconds).items()})
        cpu.add(**values)
    return cpu


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    from prometheus_client import CollectorRegistry, start_http_server

    args = session.args
    lab = Lab(session, metrics=metrics_section(interval=1.0))
    url = busy_machine(session, lab, args.kernels)
    empty_port = free_port()
    empty, _thread = start_http_server(empty_port, HOST, registry=CollectorRegistry())
    port = int(lab.sections["metrics"]["listen"].rpartition(":")[2])
    s = Runs("scrape round", args.rounds)
    for _ in range(args.rounds):
        base50, base99 = scrape_round(empty_port, args.scrapes)
        p50, p99 = scrape_round(port, args.scrapes)
        s.add(p50=p50, p99=p99, empty_p50=base50, empty_p99=base99)
    empty.shutdown()
    size = len(scrape_text(url).encode())
    cpu = cpu_rounds(lab, args.cpu_rounds, args.cpu_seconds)
    lab.shutdown()
    empty50, empty99 = ("empty registry", s["empty_p50"]), ("empty registry", s["empty_p99"])
    off, jl = (OFF, cpu["off supervisor"]), (OFF, cpu["off lab"])
    loaded = f"{GPUS} fake GPUs, {args.kernels} real kernels"
    answers = "answering api/kernels + api/sessions each interval"
    return [
        Metric("scrape p50", "ms", s["p50"], "", f"{size} bytes per scrape", empty50),
        Metric("scrape p99", "ms", s["p99"], "<= 5", loaded, empty99),
        Metric("supervisor CPU, interval 5 s", "%", cpu["5 supervisor"], CPU_GOAL, vs=off),
        Metric("supervisor CPU, interval 1 s", "%", cpu["1 supervisor"], vs=off),
        Metric("JupyterLab CPU, interval 5 s", "%", cpu["5 lab"], "", answers, jl),
        Metric("JupyterLab CPU, interval 1 s", "%", cpu["1 lab"], vs=jl),
    ], {}


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
    return run("bench/metrics.py", "jlservice metrics benchmark", args, measure, args.rounds * 2)


if __name__ == "__main__":
    sys.exit(main())
