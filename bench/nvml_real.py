"""On a machine with a real NVIDIA GPU: check jlservice's NVML reading against nvidia-smi,
and time it.

    python -m bench.nvml_real [--json PATH]   (from the repository root)

PyTorch processes holding GPU memory, one posing as a kernel; every value GpuReader reads
compared with nvidia-smi, the memory mapped to the kernel, collection and scrape times and
the exporter's CPU. Exit status 1 when a check fails. How: bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

from jlservice.config import MetricsConfig
from jlservice.labapi import Endpoint
from jlservice.metrics import proctree, usage
from jlservice.metrics.exporter import Exporter
from jlservice.metrics.gpu import GpuReader
from jlservice.metrics.sampler import attribute
from jlservice.metrics.view import SupervisorView

from .report import cpu_percent, percentile, timed_ms

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
    argv = ["nvidia-smi", *args, "--format=csv,noheader,nounits"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines()]


def start_holders(procs: list[subprocess.Popen]) -> tuple[int, int]:
    """Start the holders, each added to `procs` (to end) as soon as it runs: the pid of the
    kernel's GPU child, and of the outsider."""
    child = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], '1024'])"
    kernel = [sys.executable, "-c", child, HOLD, f"--f=/tmp/kernel-{KERNEL_ID}.json"]
    for argv in (kernel, [sys.executable, "-c", HOLD, "512"]):
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    for proc in procs:
        if proc.stdout is None or proc.stdout.readline().strip() != "holding":
            raise SystemExit("a GPU memory holder did not start (is PyTorch with CUDA there?)")
    return psutil.Process(procs[0].pid).children()[0].pid, procs[1].pid


# What GpuReader and nvidia-smi both report: (what, jlservice's metric and labels, its scale,
# nvidia-smi's column of QUERY, how far apart the two may be; None: context, not compared).
NUMBERS = (
    ("memory total MiB", "memory_total_bytes", (), 2**-20, 5, 1),
    ("memory used MiB", "memory_used_bytes", (), 2**-20, 6, 64),
    ("memory free MiB", "memory_free_bytes", (), 2**-20, 7, 64),
    ("temperature °C", "temperature_celsius", (), 1, 8, 3),
    ("power limit W", "power_limit_watts", (), 1, 9, 1),
    ("sm clock MHz", "clock_hertz", (("clock", "sm"),), 1e-6, 10, 200),
    ("memory clock MHz", "clock_hertz", (("clock", "memory"),), 1e-6, 11, 200),
    ("power W (context)", "power_watts", (), 1, 12, None),
    ("energy J (context)", "energy_joules", (), 1, None, None),
    ("ECC corrected (context)", "ecc_errors", (("type", "corrected"),), 1, None, None),
    ("ECC uncorrected (context)", "ecc_errors", (("type", "uncorrected"),), 1, None, None),
)
Row = tuple[str, str, str, bool]  # what, jlservice's value, nvidia-smi's, whether they agree


def compare(reader: GpuReader, child: int, outsider: int) -> list[Row]:
    gpus = reader.sample()
    if not gpus:
        raise SystemExit("GpuReader found no GPU: NVML not usable")
    reference = {int(r[0]): r for r in smi(f"--query-gpu={QUERY}")}
    rows = []
    for gpu in gpus:
        ref, info = reference[gpu.index], {"uuid": gpu.uuid, **dict(gpu.info)}
        for column, key in enumerate(("uuid", "name", "pci_bus_id", "driver_version"), 1):
            same = info[key].lower() == ref[column].lower()
            rows.append((f"GPU {gpu.index} {key}", info[key], ref[column], same))
        values = {(metric, labels): v for metric, labels, v in gpu.values}
        for what, metric, labels, scale, column, within in NUMBERS:
            ours = values.get((metric, labels))
            ours = None if ours is None else round(ours * scale, 1)
            theirs = "-" if column is None else ref[column]
            ok = within is None or (ours is not None and abs(ours - float(theirs)) <= within)
            shown = f"{ours:.0f}" if ours is not None and ours.is_integer() else str(ours)
            rows.append((f"GPU {gpu.index} {what}", shown, theirs, ok))
    apps = {int(r[0]): float(r[1]) for r in smi("--query-compute-apps=pid,used_memory")}
    seen = {pid: used / 2**20 for gpu in gpus for pid, used in gpu.processes}
    for who, pid in (("kernel's child", child), ("outsider", outsider)):
        ours, theirs = seen.get(pid), apps.get(pid)
        ok = ours is not None and theirs is not None and abs(ours - theirs) <= 1
        rows.append((f"process {pid} ({who}) MiB", str(ours), str(theirs), ok))
    return rows


def attribution(reader: GpuReader, child: int, outsider: int) -> list[Row]:
    """The sampler's mapping: the kernel's memory is its child's, the outsider's is other.
    This process plays JupyterLab: the kernel is its child naming /tmp/kernel-<id>.json."""
    gpus = reader.sample() or ()
    notebooks = {KERNEL_ID: 'real gpu/check "quoted" ü.ipynb'}
    lab = Endpoint("http://127.0.0.1:1/api", "", os.getpid(), os.geteuid(), "/tmp")
    table = proctree.scan()
    owners = usage.owners(table, usage.kernel_roots(table, lab, set(notebooks), os.getpid()))
    held, other = attribute(gpus, notebooks, owners.get)
    mine = [k for k in held if k.kernel_id == KERNEL_ID]
    used = {pid: u / 2**20 for g in gpus for pid, u in g.processes}
    kernel = sum(k.bytes for k in mine) / 2**20
    rest = sum(b for i, _, b in other if i == 0) / 2**20
    child_mib, outsider_mib = used[child], used[outsider]
    return [
        mib("kernel memory MiB (its child's)", kernel, child_mib, kernel == child_mib),
        ("kernel's notebook", mine[0].notebook if mine else "-", notebooks[KERNEL_ID], bool(mine)),
        mib("other memory on GPU 0 MiB >= outsider", rest, outsider_mib, rest >= outsider_mib),
    ]


def mib(what: str, ours: float, theirs: float, ok: bool) -> Row:
    return (what, f"{ours:.0f}", f"{theirs:.0f}", ok)


def timings(reader: GpuReader) -> dict[str, float]:
    """One GpuReader collection (200 rounds) vs one `nvidia-smi --query-gpu` (10 runs)."""
    collect = timed_ms(reader.sample, 200)
    tool = timed_ms(lambda: smi(f"--query-gpu={QUERY}"), 10)
    return {
        "collect_ms_p50": statistics.median(collect),
        "collect_ms_p99": percentile(collect, 99),
        "nvidia_smi_query_ms_p50": statistics.median(tool),
    }


def scrapes(port: int) -> dict[str, float]:
    """1,000 scrapes of an exporter sampling the real GPUs every second, and its process's
    CPU over 30 s at interval 1 s and 5 s (no JupyterLab: GPU work only)."""
    config = MetricsConfig(listen=f"127.0.0.1:{port}", interval=1.0)
    exporter = Exporter(SupervisorView("bench", "nobody", "/"), config)
    exporter.start()
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline, text = time.monotonic() + 20, ""
        while "jlservice_gpu_memory_used_bytes" not in text and time.monotonic() < deadline:
            time.sleep(0.2)
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        if "jlservice_gpu_memory_used_bytes" not in text:
            raise SystemExit("the exporter never showed GPU series")
        latency = timed_ms(lambda: urllib.request.urlopen(url, timeout=5).read(), 1000)
        cpu = {}
        for interval in (1.0, 5.0):
            exporter.apply(MetricsConfig(listen=f"127.0.0.1:{port}", interval=interval))
            time.sleep(interval)
            cpu[interval] = cpu_percent({"me": psutil.Process()}, 30)["me"]
    finally:
        exporter.stop()
    return {
        "scrape_ms_p50": statistics.median(latency),
        "scrape_ms_p99": percentile(latency, 99),
        "exporter_cpu_percent_interval_1s": cpu[1.0],
        "exporter_cpu_percent_interval_5s": cpu[5.0],
        "series": sum(1 for line in text.splitlines() if line.startswith("jlservice_gpu")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--port", type=int, default=19877)
    args = parser.parse_args()
    print(smi("--query-gpu=name,driver_version,memory.total")[0], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the clean-up below
    procs: list[subprocess.Popen] = []
    try:
        child, outsider = start_holders(procs)
        reader = GpuReader()
        rows = compare(reader, child, outsider) + attribution(reader, child, outsider)
        figures = timings(reader)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the clean-up runs to its end
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                for p in [*psutil.Process(proc.pid).children(recursive=True), proc]:
                    with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
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
