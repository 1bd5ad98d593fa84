"""The fake NVML library speaks the real ABI: checked through the real pynvml bindings.

pynvml loads libnvidia-ml.so.1 once per process, so each check runs in a fresh interpreter
with the fake first in LD_LIBRARY_PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from nvml.fakenvml import GIB, FakeNvml, Gpu

H100 = Gpu(
    "GPU-0b7d3c1e-aaaa-bbbb-cccc-000000000000",
    pci="00000000:3B:00.0",
    util=(37, 12),
    memory=(80 * GIB, GIB, 70 * GIB, 9 * GIB),
    temp=41,
    power=71234,
    limit=700000,
    energy=123456789,
    clocks={"sm": 1410, "mem": 2619},
    ecc={"corrected": 2, "uncorrected": 0},
    processes=[(4242, 3 * GIB), (4343, GIB)],
)


def pynvml(fake: FakeNvml, code: str) -> object:
    """Run `code` (with pynvml imported and initialised as `n`) and return what it printed."""
    script = "import json, pynvml as n\nn.nvmlInit()\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **fake.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_values_through_the_real_bindings(fake_nvml) -> None:
    fake_nvml.write([H100], driver="550.54.15")
    got = pynvml(
        fake_nvml,
        """
        h = n.nvmlDeviceGetHandleByIndex(0)
        m2 = n.nvmlDeviceGetMemoryInfo(h, n.nvmlMemory_v2)
        m1 = n.nvmlDeviceGetMemoryInfo(h)
        u = n.nvmlDeviceGetUtilizationRates(h)
        pci = n.nvmlDeviceGetPciInfo(h)
        print(json.dumps([
            n.nvmlSystemGetDriverVersion(), n.nvmlDeviceGetCount(), n.nvmlDeviceGetName(h),
            n.nvmlDeviceGetUUID(h), pci.busId, pci.busIdLegacy, pci.bus,
            [u.gpu, u.memory], [m2.total, m2.reserved, m2.free, m2.used],
            [m1.total, m1.free, m1.used],
            n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
            n.nvmlDeviceGetPowerUsage(h), n.nvmlDeviceGetEnforcedPowerLimit(h),
            n.nvmlDeviceGetTotalEnergyConsumption(h),
            n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
            n.nvmlDeviceGetTotalEccErrors(h, n.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                                          n.NVML_VOLATILE_ECC),
            [[p.pid, p.usedGpuMemory] for p in n.nvmlDeviceGetComputeRunningProcesses(h)],
        ]))
        """,
    )
    assert got == [
        "550.54.15", 1, "NVIDIA H100 80GB HBM3", H100.uuid, "00000000:3B:00.0",
        "0000:3B:00.0", 0x3B, [37, 12], [80 * GIB, GIB, 70 * GIB, 9 * GIB],
        [80 * GIB, 70 * GIB, 10 * GIB], 41, 71234, 700000, 123456789, 1410, 2619, 2,
        [[4242, 3 * GIB], [4343, GIB]],
    ]  # fmt: skip


def test_versioned_struct_and_process_list_sizing_protocol(fake_nvml) -> None:
    """nvmlMemory_v2 must carry its version; a too-short process list answers 7 and the size."""
    fake_nvml.write([H100])
    got = pynvml(
        fake_nvml,
        """
        import ctypes
        h = n.nvmlDeviceGetHandleByIndex(0)
        wrong = n.c_nvmlMemory_v2_t(); wrong.version = 1
        fn = n._nvmlGetFunctionPointer("nvmlDeviceGetMemoryInfo_v2")
        count = ctypes.c_uint(0)
        procs = n._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
        print(json.dumps([fn(h, ctypes.byref(wrong)), procs(h, ctypes.byref(count), None),
                          count.value, ctypes.sizeof(n.c_nvmlProcessInfo_v3_t),
                          n.nvmlMemory_v2 & 0xFFFFFF == ctypes.sizeof(n.c_nvmlMemory_v2_t)]))
        """,
    )
    assert got == [25, 7, 2, 24, True]  # ARGUMENT_VERSION_MISMATCH, INSUFFICIENT_SIZE


def test_unsupported_lost_and_injected_errors(fake_nvml) -> None:
    bare = Gpu("GPU-bare")  # nothing but a name and a UUID: everything else NotSupported
    lost = Gpu("GPU-lost", fail={"*": 15})
    flaky = Gpu("GPU-flaky", power=1000, fail={"nvmlDeviceGetPowerUsage": 999})
    fake_nvml.write([bare, lost, flaky])
    got = pynvml(
        fake_nvml,
        """
        def error(call, *args):
            try:
                call(*args)
            except n.NVMLError as exc:
                return [type(exc).__name__, exc.value]
        h = n.nvmlDeviceGetHandleByIndex(0)
        print(json.dumps([
            error(n.nvmlDeviceGetPowerUsage, h), error(n.nvmlDeviceGetMemoryInfo, h),
            [p for p in n.nvmlDeviceGetComputeRunningProcesses(h)],
            error(n.nvmlDeviceGetHandleByIndex, 1),
            error(n.nvmlDeviceGetPowerUsage, n.nvmlDeviceGetHandleByIndex(2)),
        ]))
        """,
    )
    assert got == [
        ["NVMLError_NotSupported", 3],
        ["NVMLError_NotSupported", 3],
        [],
        ["NVMLError_GpuIsLost", 15],
        ["NVMLError_Unknown", 999],
    ]


def test_driver_not_loaded_and_spec_read_again(fake_nvml) -> None:
    fake_nvml.write([], init=9)
    done = subprocess.run(
        [sys.executable, "-c", "import pynvml as n\nn.nvmlInit()"],
        env={**os.environ, **fake_nvml.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "NVMLError_DriverNotLoaded" in done.stderr
    fake_nvml.write([H100])
    got = pynvml(
        fake_nvml,
        f"""
        import pathlib, sys
        before = n.nvmlDeviceGetCount()
        spec = pathlib.Path({str(fake_nvml.spec)!r})
        spec.with_suffix(".new").write_text(spec.read_text() + "gpu GPU-two Second\\n")
        spec.with_suffix(".new").replace(spec)
        print(json.dumps([before, n.nvmlDeviceGetCount()]))
        """,
    )
    assert got == [1, 2]
