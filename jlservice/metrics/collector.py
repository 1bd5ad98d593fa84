"""The Prometheus collector: fresh samples per scrape from the supervisor's view, and
`round_families`, what only a sampler round changes (each kernel, the GPUs), which the
sampler formats once a round (metrics.exposition). Nothing here waits: no NVML, no HTTP, no
lock."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

from jlservice import log, procfs
from jlservice.metrics import notebook_metrics
from jlservice.metrics.gpu import GpuSample
from jlservice.metrics.sampler import Sampler, Snapshot
from jlservice.metrics.view import SupervisorView

GPU_LABELS = ["gpu", "uuid"]
# metric (after jlservice_gpu_) -> (help, extra label, counter?)
GPU_VALUES = {
    "utilization_ratio": ("Fraction of the last sample period a kernel ran on the GPU", None, 0),
    "memory_used_bytes": ("GPU memory in use (including reserved, where NVML has v2)", None, 0),
    "memory_total_bytes": ("GPU memory in all", None, 0),
    "memory_free_bytes": ("GPU memory free", None, 0),
    "temperature_celsius": ("GPU core temperature", None, 0),
    "power_watts": ("Power drawn by the GPU", None, 0),
    "power_limit_watts": ("Enforced power limit of the GPU", None, 0),
    "energy_joules": ("Energy used by the GPU since the driver loaded", None, 1),
    "clock_hertz": ("Current clock", "clock", 0),
    "ecc_errors": ("ECC memory errors since the driver loaded", "type", 1),
}


class Collector:
    def __init__(self, view: SupervisorView, sampler: Sampler) -> None:
        self.view = view
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        yield from self._supervisor()
        snap = self.sampler.snapshot
        yield from notebook_metrics.live(snap, self.view, snap.notebook_labels)

    def _supervisor(self) -> Iterator[Metric]:
        view, snap = self.view, self.sampler.snapshot
        yield InfoMetricFamily(
            "jlservice",
            "jlservice and the JupyterLab it runs",
            value={
                "version": view.version,
                "jupyterlab_version": snap.lab_version,
                "user": view.user,
            },
        )
        yield GaugeMetricFamily("jlservice_up", "1 while JupyterLab answers", value=view.up)
        yield CounterMetricFamily(
            "jlservice_log_lines_dropped",
            "Log lines dropped because nobody read jlservice's output in time",
            value=log.dropped_lines(),
        )
        yield GaugeMetricFamily(
            "jlservice_stuck_processes",
            "Leftovers SIGKILL did not end (frozen, or stuck in the kernel), left behind",
            value=view.stuck_processes,
        )
        yield GaugeMetricFamily(
            "jlservice_state_write_failing",
            "1 while jlservice cannot write its state file (a full or read-only disk)",
            value=view.state_write_failing,
        )
        yield GaugeMetricFamily(
            "jlservice_port_in_use",
            "1 while another program holds JupyterLab's port (jlservice waits for it)",
            value=view.port_in_use,
        )
        restarts = CounterMetricFamily(
            "jlservice_restarts", "JupyterLab restarts, by reason", labels=["reason"]
        )
        for reason, count in view.restarts.items():
            restarts.add_metric([reason], count)
        yield restarts
        if view.lab_started_at is not None:
            yield GaugeMetricFamily(
                "jlservice_start_time_seconds",
                "When the running JupyterLab was started (Unix time)",
                value=view.lab_started_at,
            )
        if view.ready_duration is not None:
            yield GaugeMetricFamily(
                "jlservice_ready_duration_seconds",
                "From the last start of JupyterLab to its first answer",
                value=view.ready_duration,
            )
        reloads = CounterMetricFamily(
            "jlservice_config_reloads", "Configuration reloads, by result", labels=["result"]
        )
        for result, count in view.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        yield GaugeMetricFamily(
            "jlservice_config_error",
            "1 while the configuration file is rejected (the previous one still runs)",
            value=view.config_error,
        )
        if view.tls_cert_expiry is not None:
            yield GaugeMetricFamily(
                "jlservice_tls_cert_expiry_timestamp_seconds",
                "When the TLS certificate JupyterLab serves expires (Unix time)",
                value=view.tls_cert_expiry,
            )
        if (warm := view.warm_parent) is not None:
            yield GaugeMetricFamily(
                "jlservice_warm_parent_ready",
                "1 while a warm parent can fork the next JupyterLab, 0 while it imports",
                value=warm.ready,
            )
            if (rss := procfs.rss_bytes(warm.pid)) is not None:
                yield GaugeMetricFamily(
                    "jlservice_warm_parent_resident_memory_bytes",
                    "Resident memory of the warm parent (what warm restarts cost)",
                    value=rss,
                )
        if (space := snap.notebook_space) is not None:
            yield GaugeMetricFamily(
                "jlservice_notebook_dir_available_bytes",
                "Bytes the lab user may still write on the notebook dir's filesystem",
                value=space.available,
            )
            yield GaugeMetricFamily(
                "jlservice_notebook_dir_size_bytes",
                "Size of the notebook dir's filesystem",
                value=space.size,
            )
        yield CounterMetricFamily(
            "jlservice_kernels_adopted",
            "Kernels kept across a JupyterLab restart and adopted by the next one",
            value=view.kernels_adopted,
        )
        lost = CounterMetricFamily(
            "jlservice_kernels_lost",
            "Kernels that could have outlived a JupyterLab restart and were ended, by reason",
            labels=["reason"],
        )
        for reason, count in view.kernels_lost.items():
            lost.add_metric([reason], count)
        yield lost
        if view.up and snap.kernel_states is not None:
            states = GaugeMetricFamily(
                "jlservice_kernels", "Kernels of JupyterLab, by state", labels=["state"]
            )
            for kernel_state, count in sorted(snap.kernel_states.items()):
                states.add_metric([kernel_state], count)
            yield states


def round_families(snap: Snapshot) -> Iterator[Metric]:
    """The families of one sampler round alone, formatted once (metrics.exposition)."""
    yield from notebook_metrics.per_kernel(snap, snap.notebook_labels)
    yield from _gpus(snap)


def _gpus(snap: Snapshot) -> Iterator[Metric]:
    if not snap.gpu_enabled:
        return
    doc = "1 while NVML can read the GPU"
    if snap.gpus is None:  # no library, no driver: one series, and nothing per GPU
        yield GaugeMetricFamily("jlservice_gpu_up", doc, value=0)
        return
    up = GaugeMetricFamily("jlservice_gpu_up", doc, labels=GPU_LABELS)
    for gpu in snap.gpus:
        up.add_metric(_ids(gpu), 1 if gpu.up else 0)
    yield up
    present = [gpu for gpu in snap.gpus if gpu.up]
    info = InfoMetricFamily("jlservice_gpu", "GPU identity", labels=GPU_LABELS)
    for gpu in present:
        info.add_metric(_ids(gpu), dict(gpu.info))
    yield info
    yield from _gpu_values(present)
    yield _per_kernel(snap, snap.notebook_labels)
    other = GaugeMetricFamily(
        "jlservice_gpu_other_memory_bytes",
        "GPU memory of processes that are no kernel of this JupyterLab",
        labels=GPU_LABELS,
    )
    for index, uuid, used in snap.other_memory:
        other.add_metric([str(index), uuid], used)
    yield other
    if snap.collect_seconds is not None:
        yield GaugeMetricFamily(
            "jlservice_gpu_collect_duration_seconds",
            "How long the last NVML collection took",
            value=snap.collect_seconds,
        )


def _ids(gpu: GpuSample) -> list[str]:
    return [str(gpu.index), gpu.uuid]


def _gpu_values(gpus: list[GpuSample]) -> Iterator[Metric]:
    families: dict[str, Metric] = {}
    for name, (doc, extra, counter) in GPU_VALUES.items():
        labels = [*GPU_LABELS, extra] if extra else GPU_LABELS
        kind = CounterMetricFamily if counter else GaugeMetricFamily
        families[name] = kind(f"jlservice_gpu_{name}", doc, labels=labels)
    for gpu in gpus:
        for name, extra, value in gpu.values:
            families[name].add_metric(_ids(gpu) + [v for _, v in extra], value)
    for family in families.values():
        if family.samples:
            yield family


def _per_kernel(snap: Snapshot, notebook_labels: bool) -> Metric:
    """With `notebook_labels` off, no notebook label at all: a path never shows."""
    family = GaugeMetricFamily(
        "jlservice_kernel_gpu_memory_bytes",
        "GPU memory held by a kernel and the processes it started",
        labels=["gpu", "uuid", "kernel_id", *(["notebook"] if notebook_labels else [])],
    )
    for held in snap.kernel_memory:
        labels = [str(held.gpu), held.uuid, held.kernel_id]
        family.add_metric([*labels, held.notebook] if notebook_labels else labels, held.bytes)
    return family
