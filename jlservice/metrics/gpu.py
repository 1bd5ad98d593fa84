"""Read every GPU through NVML (the `pynvml` module of nvidia-ml-py), in Prometheus units.

NVML is initialised once. Each call's failure is handled on its own: NotSupported (or any
error but a lost GPU) leaves that one value out; GpuIsLost drops the GPU's series and marks
it down; a missing library or driver leaves GPU metrics off for the life of the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jlservice import log

logger = log.get("jlservice.metrics")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class GpuSample:
    index: int
    uuid: str
    up: bool
    info: Labels = ()  # name, pci_bus_id, driver_version
    values: tuple[tuple[str, Labels, float], ...] = ()  # (metric, extra labels, value)
    processes: tuple[tuple[int, int], ...] = ()  # (pid, GPU memory in bytes)


class _Lost(Exception):
    pass


class GpuReader:
    """Owns NVML for the process; used by the sampler thread only."""

    def __init__(self) -> None:
        self.usable: bool | None = None  # None: not initialised yet
        self._nvml: Any = None
        self._driver = ""
        self._static: dict[int, tuple[str, Labels]] = {}  # index -> (uuid, info labels)
        self._memory_v2: dict[int, bool] = {}
        self._lost: set[int] = set()

    def init(self) -> bool:
        if self.usable is None:
            self.usable = self._init()
        return self.usable

    def _init(self) -> bool:
        import pynvml

        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            logger.info("gpu_metrics_unavailable", problem=f"NVML: {exc}")
            return False
        self._nvml = pynvml
        driver = self._call(pynvml.nvmlSystemGetDriverVersion)
        self._driver = driver or ""
        logger.info("gpu_metrics_enabled", driver_version=self._driver)
        return True

    def sample(self) -> tuple[GpuSample, ...] | None:
        """Every GPU now, or None when NVML cannot be used at all."""
        if not self.init():
            return None
        try:
            count = self._nvml.nvmlDeviceGetCount()
        except self._nvml.NVMLError as exc:
            logger.debug("gpu_count_failed", problem=str(exc))
            return None
        return tuple(self._device(i) for i in range(count))

    def _device(self, index: int) -> GpuSample:
        try:
            sample = self._read(index)
        except _Lost:  # its series keep their labels: the UUID read before, if any
            uuid = self._static.get(index, ("", ()))[0]
            self._memory_v2.pop(index, None)
            if index not in self._lost:
                logger.warning("gpu_lost", gpu=index, uuid=uuid)
                self._lost.add(index)
            return GpuSample(index, uuid, up=False)
        if index in self._lost:
            logger.info("gpu_back", gpu=index, uuid=sample.uuid)
            self._lost.discard(index)
        return sample

    def _read(self, index: int) -> GpuSample:
        nvml = self._nvml
        handle = self._call(nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            raise _Lost
        if index not in self._static:
            pci = self._call(nvml.nvmlDeviceGetPciInfo, handle)
            info = (
                ("name", self._call(nvml.nvmlDeviceGetName, handle) or ""),
                ("pci_bus_id", _text(pci.busId) if pci is not None else ""),
                ("driver_version", self._driver),
            )
            self._static[index] = (self._call(nvml.nvmlDeviceGetUUID, handle) or "", info)
        uuid, info = self._static[index]
        values: list[tuple[str, Labels, float]] = []

        def add(metric: str, value: float | None, scale: float = 1.0, labels: Labels = ()):
            if value is not None:
                values.append((metric, labels, value * scale))

        util = self._call(nvml.nvmlDeviceGetUtilizationRates, handle)
        add("utilization_ratio", util.gpu if util is not None else None, 0.01)
        memory = self._memory(index, handle)
        if memory is not None:
            add("memory_used_bytes", memory.used)
            add("memory_total_bytes", memory.total)
            add("memory_free_bytes", memory.free)
        temp = self._call(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        add("temperature_celsius", temp)
        add("power_watts", self._call(nvml.nvmlDeviceGetPowerUsage, handle), 0.001)
        add("power_limit_watts", self._call(nvml.nvmlDeviceGetEnforcedPowerLimit, handle), 0.001)
        energy = self._call(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
        add("energy_joules", energy, 0.001)
        for clock, kind in (("sm", nvml.NVML_CLOCK_SM), ("memory", nvml.NVML_CLOCK_MEM)):
            mhz = self._call(nvml.nvmlDeviceGetClockInfo, handle, kind)
            add("clock_hertz", mhz, 1e6, (("clock", clock),))
        for name, kind in (
            ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        ):
            count = self._call(
                nvml.nvmlDeviceGetTotalEccErrors, handle, kind, nvml.NVML_VOLATILE_ECC
            )
            add("ecc_errors", count, labels=(("type", name),))
        procs = self._call(nvml.nvmlDeviceGetComputeRunningProcesses, handle) or []
        processes = tuple((p.pid, p.usedGpuMemory) for p in procs if p.usedGpuMemory is not None)
        return GpuSample(index, uuid, True, info, tuple(values), processes)

    def _memory(self, index: int, handle: Any) -> Any:
        """Memory info v2 (which counts reserved memory as used) where the driver has it."""
        nvml = self._nvml
        if self._memory_v2.get(index, True):
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, nvml.nvmlMemory_v2)
            except nvml.NVMLError as exc:
                if exc.value == nvml.NVML_ERROR_GPU_IS_LOST:
                    raise _Lost from None
                self._memory_v2[index] = False
        return self._call(nvml.nvmlDeviceGetMemoryInfo, handle)

    def _call(self, fn: Any, *args: Any) -> Any:
        """fn(*args), or None when NVML cannot answer it; a lost GPU raises _Lost."""
        nvml = self._nvml
        try:
            return fn(*args)
        except nvml.NVMLError as exc:
            if exc.value == nvml.NVML_ERROR_GPU_IS_LOST:
                raise _Lost from None
            if exc.value != nvml.NVML_ERROR_NOT_SUPPORTED:
                logger.debug("nvml_call_failed", call=fn.__name__, problem=str(exc))
            return None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
