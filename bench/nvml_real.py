"""On a machine with a real NVIDIA GPU: check jlservice's NVML reading against nvidia-smi,
and time it.

    python -m bench.nvml_real [--json PATH]   (from the repository root)

PyTorch processes holding GPU memory, one posing as a kernel; every value GpuReader reads
compared with nvidia-smi, the memory mapped to the kernel, collection and scrape times and
the exporter's CPU. Exit status 1 when a check fails. How: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from jlservice.config import MetricsConfig
from jlservice.metrics import kernels
from jlservice.metrics.exporter import Exporter
from jlservice.metrics.gpu import GpuReader
from jlservice.metrics.sampler import attribute
from jlservice.metrics.view import SupervisorView

from .report import percentile

KERNEL_ID = "0f0e0d0c-real-gpu-check"
HOLD = (
    "import sys, time, torch\n"
    "x = torch.empty(int(sys.argv[1]) * 2**20, dtype=torch.uint8, device='cuda:0')\n"
    "x.fill_(1); torch.cuda.synchronize(); print('holding', flush=True); time.sleep(600)\n"
)
QUERY = (
    "index,uuid,name,pci.bus_id,driver_version,memory.total,memory.used,memory.free,"
    "temperature.gpu,power.limit,clocks.sm,clocks.mem,power.draw"
)


def smi(*args: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", *args, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines()]


def start_holders() -> tuple[list[subprocess.Popen], int, int]:
    """(processes to end, pid of the kernel's GPU child, pid of the outsider)."""
    kernel = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], '1024'])",
            HOLD,
            f"--f=/tmp/kernel-{KERNEL_ID}.json",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    outsider = subprocess.Popen(
        [sys.executable, "-c", HOLD, "512"], stdout=subprocess.PIPE, text=True
    )
    procs = [kernel, outsider]
    for proc in procs:
        if proc.stdout is None or proc.stdout.readline().strip() != "holding":
            raise SystemExit("a GPU memory holder did not start (is PyTorch with CUDA there?)")
    child = psutil.Process(kernel.pid).children()[0].pid
    return procs, child, outsider.pid


def compare(reader: GpuReader, child: int, outsider: int) -> list[tuple[str, str, str, bool]]:
    """(what, jlservice, nvidia-smi, agree) rows."""
    rows = []
    gpus = reader.sample()
    if not gpus:
        raise SystemExit("GpuReader found no GPU: NVML not usable")
    reference = {int(r[0]): r for r in smi(f"--query-gpu={QUERY}")}
    for gpu in gpus:
        ref = reference[gpu.index]
        info = dict(gpu.info)
        values = {(m, labels): v for m, labels, v in gpu.values}

        def row(what, ours, theirs, ok, index=gpu.index):
            rows.append((f"GPU {index} {what}", str(ours), str(theirs), bool(ok)))

        row("uuid", gpu.uuid, ref[1], gpu.uuid == ref[1])
        row("name", info["name"], ref[2], info["name"] == ref[2])
        row("pci_bus_id", info["pci_bus_id"], ref[3], info["pci_bus_id"].lower() == ref[3].lower())
        row("driver_version", info["driver_version"], ref[4], info["driver_version"] == ref[4])
        total = values[("memory_total_bytes", ())] / 2**20
        row("memory total MiB", f"{total:.0f}", ref[5], abs(total - float(ref[5])) <= 1)
        used = values[("memory_used_bytes", ())] / 2**20
        row("memory used MiB", f"{used:.0f}", ref[6], abs(used - float(ref[6])) <= 64)
        free = values[("memory_free_bytes", ())] / 2**20
        row("memory free MiB", f"{free:.0f}", ref[7], abs(free - float(ref[7])) <= 64)
        temp = values.get(("temperature_celsius", ()))
        row("temperature °C", temp, ref[8], temp is not None and abs(temp - float(ref[8])) <= 3)
        limit = values.get(("power_limit_watts", ()))
        row("power limit W", limit, ref[9], limit is not None and abs(limit - float(ref[9])) <= 1)
        for clock, col in (("sm", 10), ("memory", 11)):
            mhz = values.get(("clock_hertz", (("clock", clock),)), 0) / 1e6
            row(f"{clock} clock MHz", f"{mhz:.0f}", ref[col], abs(mhz - float(ref[col])) <= 200)
        watts = values.get(("power_watts", ()))
        row("power W (context)", watts, ref[12], True)
        row("energy J (context)", values.get(("energy_joules", ())), "-", True)
        for kind in ("corrected", "uncorrected"):
            row(f"ECC {kind} (context)", values.get(("ecc_errors", (("type", kind),))), "-", True)
    apps = {int(r[0]): float(r[1]) for r in smi("--query-compute-apps=pid,used_memory")}
    seen = {pid: used / 2**20 for gpu in gpus for pid, used in gpu.processes}
    for who, pid in (("kernel's child", child), ("outsider", outsider)):
        ours, theirs = seen.get(pid), apps.get(pid)
        ok = ours is not None and theirs is not None and abs(ours - theirs) <= 1
        rows.append((f"process {pid} ({who}) MiB", str(ours), str(theirs), ok))
    return rows


def attribution(reader: GpuReader, child: int, outsider: int) -> list[tuple[str, str, str, bool]]:
    gpus = reader.sample() or ()
    notebooks = {KERNEL_ID: 'real gpu/check "quoted" ü.ipynb'}
    held, other = attribute(gpus, notebooks, lambda pid: kernels.owner(pid, notebooks))
    mine = [k for k in held if k.kernel_id == KERNEL_ID]
    child_mib = next(u for g in gpus for p, u in g.processes if p == child) / 2**20
    outsider_mib = next(u for g in gpus for p, u in g.processes if p == outsider) / 2**20
    kernel_mib = sum(k.bytes for k in mine) / 2**20
    other_mib = sum(b for i, _, b in other if i == 0) / 2**20
    return [
        (
            "kernel memory MiB (its child's)",
            f"{kernel_mib:.0f}",
            f"{child_mib:.0f}",
            kernel_mib == child_mib,
        ),
        ("kernel's notebook", mine[0].notebook if mine else "-", notebooks[KERNEL_ID], bool(mine)),
        (
            "other memory on GPU 0 MiB >= outsider",
            f"{other_mib:.0f}",
            f"{outsider_mib:.0f}",
            other_mib >= outsider_mib,
        ),
    ]


def timings(reader: GpuReader) -> dict[str, float]:
    collect = []
    for _ in range(200):
        began = time.perf_counter()
        reader.sample()
        collect.append((time.perf_counter() - began) * 1000)
    tool = []
    for _ in range(10):
        began = time.perf_counter()
        smi(f"--query-gpu={QUERY}")
        tool.append((time.perf_counter() - began) * 1000)
    return {
        "collect_ms_p50": statistics.median(collect),
        "collect_ms_p99": percentile(collect, 99),
        "nvidia_smi_query_ms_p50": statistics.median(tool),
    }


def scrapes(port: int) -> dict[str, float]:
    view = SupervisorView("bench", "nobody", "/")
    exporter = Exporter(view, MetricsConfig(listen=f"127.0.0.1:{port}", interval=1.0))
    exporter.start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 20
        text = ""
        while "jlservice_gpu_memory_used_bytes" not in text and time.monotonic() < deadline:
            time.sleep(0.2)
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        if "jlservice_gpu_memory_used_bytes" not in text:
            raise SystemExit("the exporter never showed GPU series")
        latency = []
        for _ in range(1000):
            began = time.perf_counter()
            urllib.request.urlopen(url, timeout=5).read()
            latency.append((time.perf_counter() - began) * 1000)
        cpu = {}
        me = psutil.Process()
        for interval in (1.0, 5.0):
            exporter.apply(MetricsConfig(listen=f"127.0.0.1:{port}", interval=interval))
            time.sleep(interval)
            cpu0, wall0 = sum(me.cpu_times()[:2]), time.monotonic()
            time.sleep(30)
            cpu[interval] = (sum(me.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0) * 100
        sample = text
    finally:
        exporter.stop()
    return {
        "scrape_ms_p50": statistics.median(latency),
        "scrape_ms_p99": percentile(latency, 99),
        "exporter_cpu_percent_interval_1s": cpu[1.0],
        "exporter_cpu_percent_interval_5s": cpu[5.0],
        "series": sum(1 for line in sample.splitlines() if line.startswith("jlservice_gpu")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--port", type=int, default=19877)
    args = parser.parse_args()
    print(smi("--query-gpu=name,driver_version,memory.total")[0], flush=True)
    procs, child, outsider = start_holders()
    try:
        reader = GpuReader()
        rows = compare(reader, child, outsider) + attribution(reader, child, outsider)
        figures = timings(reader)
    finally:
        for proc in procs:
            for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                p.kill()
            proc.wait()
    figures.update(scrapes(args.port))
    width = max(len(r[0]) for r in rows)
    for what, ours, theirs, ok in rows:
        print(
            f"{'ok  ' if ok else 'FAIL'} {what.ljust(width)}  jlservice {ours}  nvidia-smi {theirs}"
        )
    for name, value in figures.items():
        print(f"{name}: {value:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "figures": figures}, indent=2))
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
