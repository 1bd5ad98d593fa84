"""Metrics benchmark: scrape latency and the sampler's CPU cost, 8 fake GPUs, 32 kernels.

    /opt/jlsvenv/bin/python bench/metrics.py [--rounds 3] [--scrapes 1000] [--cpu-seconds 60]

One `jlservice run` with [metrics] on, the fake libnvidia-ml.so.1 of tests/nvml (built here
with gcc) describing 8 GPUs with every value, and 32 real python3 kernels opened as notebooks
through JupyterLab's REST API (POST api/sessions), 4 per GPU in NVML's process lists, plus
one process per GPU that is no kernel.

1. scrape latency: --rounds rounds of --scrapes sequential GET /metrics (a new connection
   each, as Prometheus makes when keep-alive is off); p50 and p99 of each round. Baseline,
   interleaved: the same prometheus_client HTTP server with an empty registry, in this process.
2. sampler CPU: the supervisor's CPU time (and JupyterLab's, which answers the sampler's
   api/kernels and api/sessions) over --cpu-seconds windows at [metrics] interval 5 s and 1 s,
   against a window with [metrics] enabled = false; switched by live reloads, JupyterLab
   untouched.

A real `nvidia-smi --query-gpu` collection is timed beside it when nvidia-smi is installed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
# bench/ is a directory of scripts; the fake NVML library lives with the tests
from _common import HOST, BenchError, free_port, session, wait_for
from _lab import Lab
from _report import Metric, announce, finish
from nvml.fakenvml import FULL, GIB, FakeNvml, Gpu

GPUS = 8


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def get(port: int, path: str, token: str | None = None, body: dict | None = None) -> bytes:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        headers = {"Authorization": f"token {token}"} if token else {}
        if body is None:
            conn.request("GET", path, headers=headers)
        else:
            conn.request("POST", path, json.dumps(body), headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status >= 300:
        raise BenchError(f"{path}: HTTP {response.status} {data[:200]!r}")
    return data


def scrape_round(port: int, count: int) -> tuple[float, float]:
    """p50 and p99 of `count` scrapes, in ms."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        get(port, "/metrics")
        times.append((time.perf_counter() - start) * 1000)
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
        ids.append(json.loads(get(lab.port, "/api/sessions", token, body))["kernel"]["id"])

    def pids() -> list[int] | None:
        found = {}
        for p in psutil.Process(lab.state()["lab_pid"]).children(recursive=True):
            for kernel_id in ids:
                if any(f"kernel-{kernel_id}.json" in a for a in p.cmdline()):
                    found[kernel_id] = p.pid
        return [found[k] for k in ids] if len(found) == count else None

    return wait_for(pids, 300, f"{count} kernel processes", interval=0.5)


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


def measure(lab: Lab, args: argparse.Namespace, fake: FakeNvml) -> list[Metric]:
    metrics_port = free_port()
    base_config = lab.config_text()

    def configure(**metrics: object) -> None:
        values = {"listen": f"{HOST}:{metrics_port}", **metrics}
        lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lab.config.write_text(base_config + "[metrics]\n" + "\n".join(lines) + "\n")

    configure(interval=5.0)
    lab.env.update(fake.env())
    started = lab.service_start()
    token = started.state["token"]
    say(f"opening {args.kernels} notebooks with a kernel each")
    kernels = open_notebooks(lab, token, args.kernels)
    outsiders = [
        lab.procs.spawn(["sleep", "3600"], lab.env, lab.new_log("sleep")) for _ in range(GPUS)
    ]
    fake.write(
        [
            Gpu(
                f"GPU-{i:08x}-bench",
                **FULL,
                processes=[
                    *((pid, GIB) for pid in kernels[i::GPUS]),
                    (outsiders[i].pid, GIB // 2),
                ],
            )
            for i in range(GPUS)
        ]
    )
    configure(interval=1.0)
    reload(lab)

    def all_series() -> bool:
        text = get(metrics_port, "/metrics").decode()
        return text.count("jlservice_kernel_gpu_memory_bytes{") == args.kernels

    wait_for(all_series, 60, f"{args.kernels} notebooks' GPU memory in /metrics", interval=0.5)

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
    size = len(get(metrics_port, "/metrics"))

    lab_pid = lab.state()["lab_pid"]
    windows: dict[str, list[list[float]]] = {"off": [], "5": [], "1": []}
    for i in range(args.cpu_rounds):
        for name, settings in (
            ("off", {"enabled": False}),
            ("5", {"interval": 5.0}),
            ("1", {"interval": 1.0}),
        ):
            configure(**settings)
            reload(lab)
            time.sleep(1.0)
            windows[name].append(cpu_window([started.proc.pid, lab_pid], args.cpu_seconds))
            say(
                f"  cpu round {i + 1}/{args.cpu_rounds} [{name}]: supervisor "
                f"{windows[name][-1][0]:.3f} %, JupyterLab {windows[name][-1][1]:.3f} %"
            )
    lab.service_stop(started.proc, started.log)

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
        lab.warnings.append("nvidia-smi is not installed here: no nvidia-smi --query-gpu baseline")
    else:
        rows.append(Metric("nvidia-smi --query-gpu", "ms", smi))
    return rows


def reload(lab: Lab) -> None:
    done = subprocess.run(
        [str(lab.bin / "jlservice"), "reload", "--config", str(lab.config)],
        env=lab.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise BenchError(f"jlservice reload: {done.stderr.strip()}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="scrape rounds (default 3)")
    p.add_argument("--scrapes", type=int, default=1000, help="scrapes a round (default 1000)")
    p.add_argument("--kernels", type=int, default=32, help="notebooks with a kernel (32)")
    p.add_argument("--cpu-rounds", type=int, default=3, help="CPU windows of each kind (3)")
    p.add_argument("--cpu-seconds", type=float, default=60, help="seconds a window (60)")
    p.add_argument("--start-timeout", type=float, default=180, help="seconds (default 180)")
    p.add_argument("--bin-dir", default=str(Path(sys.executable).parent), help="venv bin/")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--strict", action="store_true", help="exit 3 when a goal is missed")
    args = p.parse_args(argv)
    if min(args.rounds, args.scrapes, args.kernels, args.cpu_rounds) < 1:
        p.error("--rounds, --scrapes, --kernels and --cpu-rounds must be positive")
    for tool in ("jlservice", "python"):
        if not (Path(args.bin_dir) / tool).exists():
            p.error(f"{args.bin_dir}/{tool} does not exist; pass --bin-dir (the venv's bin/)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.time()
    with session("bench/metrics.py", args.keep) as (procs, work):
        try:
            (work / "nvml").mkdir()
            fake = FakeNvml(work / "nvml")
            lab = Lab(work, procs, Path(args.bin_dir), 0.005, args.start_timeout, True)
            machine = announce(
                "jlservice metrics benchmark", str(lab.bin / "python"), lab.env, args.rounds * 2
            )
            metrics = measure(lab, args, fake)
        except BenchError as exc:
            print(f"\nbench/metrics.py: FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return finish("bench/metrics.py", began, metrics, lab.warnings, args, {"machine": machine})


if __name__ == "__main__":
    sys.exit(main())
