"""GPU metrics of a real jlservice through the real pynvml, with the fake libnvidia-ml.so.1."""

from __future__ import annotations

import ctypes
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers.metrics import (
    metrics_section,
    metrics_url,
    next_round,
    scrape,
    series,
    value,
    wait_scrape,
)
from helpers.procs import wait_for
from nvml.fakenvml import FULL, GIB, Gpu

PER_GPU = (
    "jlservice_gpu_info",
    "jlservice_gpu_utilization_ratio",
    "jlservice_gpu_memory_used_bytes",
    "jlservice_gpu_memory_total_bytes",
    "jlservice_gpu_memory_free_bytes",
    "jlservice_gpu_temperature_celsius",
    "jlservice_gpu_power_watts",
    "jlservice_gpu_power_limit_watts",
    "jlservice_gpu_energy_joules_total",
    "jlservice_gpu_clock_hertz",
    "jlservice_gpu_ecc_errors_total",
    "jlservice_gpu_other_memory_bytes",
)


@pytest.fixture
def outsider() -> Iterator[int]:
    """A process that is no kernel at all."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc.pid
    proc.kill()
    proc.wait()


def of_gpu(samples, index: int) -> set[str]:
    """Names of the series that carry gpu=index."""
    return {name for (name, labels) in samples if ("gpu", str(index)) in labels}


def test_values_units_unsupported_and_a_lost_gpu(service_factory, fake_nvml, outsider) -> None:
    full = Gpu("GPU-full", **FULL, processes=[(outsider, 2 * GIB)])
    lost = Gpu("GPU-lost", **FULL, fail={"*": 15})
    # An older driver: no memory info v2, so used = total - free (v1 counts reserved as used).
    bare = Gpu(
        "GPU-bare",
        name="Tesla T4",
        memory=(16 * GIB, GIB // 2, 15 * GIB, GIB // 2),
        fail={"nvmlDeviceGetMemoryInfo_v2": 3},
    )
    fake_nvml.write([full, lost, bare], driver="550.54.15")
    svc = service_factory(metrics=metrics_section())
    svc.start(env=fake_nvml.env())
    url = metrics_url(svc)
    s = wait_scrape(url, lambda s: series(s, "jlservice_gpu_up"), "GPU samples")
    ids = {"gpu": "0", "uuid": "GPU-full"}
    assert series(s, "jlservice_gpu_up") == {
        frozenset(ids.items()): 1,
        frozenset({"gpu": "1", "uuid": ""}.items()): 0,  # lost before NVML named it
        frozenset({"gpu": "2", "uuid": "GPU-bare"}.items()): 1,
    }
    info = {"name": "NVIDIA H100 80GB HBM3", "pci_bus_id": "00000000:3B:00.0"}
    assert value(s, "jlservice_gpu_info", **ids, **info, driver_version="550.54.15") == 1
    expected = {
        "jlservice_gpu_utilization_ratio": 0.37,
        "jlservice_gpu_memory_used_bytes": 9 * GIB,
        "jlservice_gpu_memory_total_bytes": 80 * GIB,
        "jlservice_gpu_memory_free_bytes": 70 * GIB,
        "jlservice_gpu_temperature_celsius": 41,
        "jlservice_gpu_power_watts": 71.234,
        "jlservice_gpu_power_limit_watts": 700,
        "jlservice_gpu_energy_joules_total": 123456.789,
        "jlservice_gpu_other_memory_bytes": 2 * GIB,
    }
    for name, want in expected.items():
        assert value(s, name, **ids) == pytest.approx(want), name
    assert value(s, "jlservice_gpu_clock_hertz", **ids, clock="sm") == 1.41e9
    assert value(s, "jlservice_gpu_clock_hertz", **ids, clock="memory") == 2.619e9
    assert value(s, "jlservice_gpu_ecc_errors_total", **ids, type="corrected") == 2
    assert value(s, "jlservice_gpu_ecc_errors_total", **ids, type="uncorrected") == 0
    assert of_gpu(s, 1) == {"jlservice_gpu_up"}  # a lost GPU: every other series gone
    assert of_gpu(s, 2) == {  # NotSupported values are absent, not zero
        "jlservice_gpu_up",
        "jlservice_gpu_info",
        "jlservice_gpu_memory_used_bytes",
        "jlservice_gpu_memory_total_bytes",
        "jlservice_gpu_memory_free_bytes",
        "jlservice_gpu_other_memory_bytes",
    }
    assert value(s, "jlservice_gpu_collect_duration_seconds") > 0
    bare_ids = {"gpu": "2", "uuid": "GPU-bare"}
    assert value(s, "jlservice_gpu_memory_used_bytes", **bare_ids) == GIB
    assert value(s, "jlservice_gpu_memory_free_bytes", **bare_ids) == 15 * GIB

    # GPU 1 comes back and GPU 0 is lost: each GPU on its own, JupyterLab untouched.
    lab = svc.lab_pid
    fake_nvml.write([Gpu("GPU-full", fail={"*": 15}), Gpu("GPU-lost", **FULL), bare])
    s = wait_scrape(
        url, lambda s: value(s, "jlservice_gpu_up", gpu="1", uuid="GPU-lost") == 1, "GPU 1 back"
    )
    assert value(s, "jlservice_gpu_up", gpu="0", uuid="GPU-full") == 0
    assert of_gpu(s, 0) == {"jlservice_gpu_up"}
    assert of_gpu(s, 1) == {*PER_GPU, "jlservice_gpu_up"}
    assert value(s, "jlservice_up") == 1 and svc.lab_pid == lab
    for _ in range(2):  # a GPU lost for several rounds keeps the labels it had
        s = next_round(url, s)
    assert value(s, "jlservice_gpu_up", gpu="0", uuid="GPU-full") == 0
    lost = [e for e in svc.log_events() if e.get("event") == "gpu_lost"]
    assert [(e["gpu"], e["level"]) for e in lost] == [(1, "warning"), (0, "warning")]


def test_a_scrape_never_waits_for_nvml(service_factory, fake_nvml) -> None:
    fake_nvml.write([Gpu("GPU-a", **FULL)])
    svc = service_factory(metrics=metrics_section())
    svc.start(env=fake_nvml.env())
    url = metrics_url(svc)
    wait_scrape(
        url,
        lambda s: value(s, "jlservice_gpu_temperature_celsius", gpu="0", uuid="GPU-a"),
        "a sample",
    )
    # The driver hangs: every NVML call now takes 60 s, and would report 99 °C.
    fake_nvml.write([Gpu("GPU-a", **{**FULL, "temp": 99})], delay_ms=60_000)
    # The sampler's next round is stuck inside NVML (within [metrics] interval, 5 s)...
    wait_for(fake_nvml.hung_calls, 30, "the sampler to be stuck in an NVML call")
    for _ in range(10):  # ...and each scrape answers at once, with the last finished sample
        began = time.monotonic()
        s = scrape(url)
        assert time.monotonic() - began < 5
        assert value(s, "jlservice_gpu_temperature_celsius", gpu="0", uuid="GPU-a") == 41
        assert value(s, "jlservice_up") == 1
    assert len(fake_nvml.hung_calls()) == 1  # still in that one call: the scrapes did not wait


def _real_nvml_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_real_nvml_present(), reason="a real libnvidia-ml.so.1 is installed here")
def test_no_library_means_gpu_up_0_and_one_info_line(service_factory) -> None:
    svc = service_factory(metrics=metrics_section())
    svc.start()
    url = metrics_url(svc)
    s = wait_scrape(
        url,
        lambda s: series(s, "jlservice_gpu_up") and series(s, "jlservice_kernels"),
        "a sample of the GPUs and of JupyterLab",
    )
    assert series(s, "jlservice_gpu_up") == {frozenset(): 0}
    gpu_series = {name for name, _ in s if name.startswith("jlservice_gpu_")}
    assert gpu_series == {"jlservice_gpu_up"}
    assert value(s, "jlservice_up") == 1
    assert value(s, "jlservice_kernels", state="idle") == 0
    lines = [e for e in svc.log_events() if "nvml" in str(e).lower()]
    assert [(e["event"], e["level"]) for e in lines] == [("gpu_metrics_unavailable", "info")]
    assert "NVML Shared Library Not Found" in lines[0]["problem"]
    assert scrape(url)  # and it stays served
