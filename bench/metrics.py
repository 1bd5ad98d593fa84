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
from helpers.metrics import open_notebook, scrape_text, series, wait_scrape
from helpers.procs import free_port
from nvml.fakenvml import FULL, GIB, FakeNvml, Gpu

from .lab import HOST, Lab, http_ok
from .report import Metric, Runs, percentile, say
from .session import BenchError, Session, options, parse, run

GPUS = 8


def busy_machine(session: Session, lab: Lab, kernels: int) -> str:
    """Start `lab` with the fake NVML: `kernels` notebooks with a real kernel each and GPUS
    processes that are no kernel, all holding fake GPU memory; GPU i holds kernels i,
    i + GPUS, … (1 GiB each) and outsider i (0.5 GiB). Waits until /metrics (at
    [metrics] listen) shows them; its URL."""
    (session.work / "nvml").mkdir()
    fake = FakeNvml(session.work / "nvml")
    lab.env.update(fake.env())
    lab.timed_start()
    say(f"opening {kernels} notebooks with a kernel each")
    token = lab.current["token"]
    pids = [open_notebook(lab, token, f"notebook {i:02d}.ipynb")[1] for i in range(kernels)]
    log = lab.root / "sleep.log"
    outsiders = [session.spawn(["sleep", "3600"], log, lab.env).pid for _ in range(GPUS)]
    held = [[(pid, GIB) for pid in pids[i::GPUS]] + [(outsiders[i], GIB // 2)] for i in range(GPUS)]
    fake.write([Gpu(f"GPU-{i:08x}-bench", **FULL, processes=p) for i, p in enumerate(held)])
    return f"http://{lab.sections['metrics']['listen']}/metrics"


def wait_notebooks(url: str, kernels: int, token: str | None = None) -> None:
    wait_scrape(
        url,
        lambda s: len(series(s, "jlservice_kernel_gpu_memory_bytes")) == kernels,
        f"{kernels} notebooks' GPU memory in /metrics",
        timeout=60,
        token=token,
    )


def scrape_round(port: int, count: int) -> tuple[float, float]:
    """p50 and p99 of `count` scrapes (a new connection each), in ms."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        if not http_ok(port, "/metrics", timeout=60):
            raise BenchError(f"GET http://{HOST}:{port}/metrics did not answer 200")
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), percentile(times, 99)


def cpu_window(pids: list[int], seconds: float) -> list[float]:
    """% of one core each process used over `seconds`."""
    procs = [psutil.Process(pid) for pid in pids]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    time.sleep(seconds)
    return [
        (sum(p.cpu_times()[:2]) - b) / seconds * 100 for p, b in zip(procs, before, strict=True)
    ]


def nvidia_smi_ms(runs: int) -> list[float] | None:
    if (tool := shutil.which("nvidia-smi")) is None:
        return None
    query = "index,uuid,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        argv = [tool, f"--query-gpu={query}", "--format=csv,noheader"]
        subprocess.run(argv, capture_output=True, check=True)
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    from prometheus_client import CollectorRegistry, start_http_server

    args = session.args
    metrics_port = free_port()
    lab = Lab(session, metrics={"listen": f"{HOST}:{metrics_port}", "interval": 5.0})

    def configure(**metrics: object) -> None:
        lab.sections["metrics"] = {"listen": f"{HOST}:{metrics_port}", **metrics}
        lab.write_config()
        if (done := lab.cli("reload")).returncode != 0:
            raise BenchError(f"jlservice reload: {done.stderr.strip()}")

    url = busy_machine(session, lab, args.kernels)
    configure(interval=1.0)
    wait_notebooks(url, args.kernels)
    empty_port = free_port()
    empty, _thread = start_http_server(empty_port, HOST, registry=CollectorRegistry())
    s = Runs("scrape round", args.rounds)
    for _ in range(args.rounds):
        base50, base99 = scrape_round(empty_port, args.scrapes)
        p50, p99 = scrape_round(metrics_port, args.scrapes)
        s.add(p50=p50, p99=p99, empty_p50=base50, empty_p99=base99)
    empty.shutdown()
    size = len(scrape_text(url).encode())
    assert lab.proc is not None
    pids = [lab.proc.pid, lab.lab_pid]
    cpu = Runs("cpu round", args.cpu_rounds)
    for _ in range(args.cpu_rounds):
        values = {}
        for name, settings in (
            ("off", {"enabled": False}),
            ("5", {"interval": 5.0}),
            ("1", {"interval": 1.0}),
        ):
            configure(**settings)
            time.sleep(1.0)
            values[f"{name} supervisor"], values[f"{name} lab"] = cpu_window(pids, args.cpu_seconds)
        cpu.add(**values)
    lab.shutdown()
    off = "[metrics] enabled = false"
    sup, jl = cpu["off supervisor"], cpu["off lab"]
    rows = [
        Metric(
            "scrape p50",
            "ms",
            s["p50"],
            "empty registry",
            s["empty_p50"],
            note=f"{size} bytes per scrape",
        ),
        Metric(
            "scrape p99",
            "ms",
            s["p99"],
            "empty registry",
            s["empty_p99"],
            5.0,
            "median",
            note=f"{GPUS} fake GPUs, {args.kernels} real kernels",
        ),
        Metric(
            "supervisor CPU, interval 5 s",
            "%",
            cpu["5 supervisor"],
            off,
            sup,
            0.5,
            "difference",
            note="goal on the difference to metrics off",
        ),
        Metric("supervisor CPU, interval 1 s", "%", cpu["1 supervisor"], off, sup),
        Metric(
            "JupyterLab CPU, interval 5 s",
            "%",
            cpu["5 lab"],
            off,
            jl,
            note="answering api/kernels + api/sessions each interval",
        ),
        Metric("JupyterLab CPU, interval 1 s", "%", cpu["1 lab"], off, jl),
    ]
    if (smi := nvidia_smi_ms(args.rounds * 5)) is None:
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
    return run("bench/metrics.py", "jlservice metrics benchmark", args, args.rounds * 2, measure)


if __name__ == "__main__":
    sys.exit(main())
