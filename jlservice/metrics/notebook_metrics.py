"""Per-notebook series: each kernel's tree as a sampler round saw it (`per_kernel`, formatted
once a round), and the OOM kills the supervisor attributed (`live`, on each scrape: a kill is
counted at once). Formats what is there; reads nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from jlservice.metrics.sampler import Snapshot
from jlservice.metrics.usage import Usage
from jlservice.metrics.view import SupervisorView

# metric (after jlservice_kernel_) → (help, counter?, the value of one kernel or None)
VALUES: dict[str, tuple[str, bool, Callable[[Usage], float | None]]] = {
    "cpu_seconds": ("CPU time of a kernel and every process it started", True,
                    lambda u: u.cpu_seconds),
    "resident_memory_bytes": ("Resident memory of a kernel and every process it started", False,
                              lambda u: u.rss_bytes),
    "memory_charge_bytes": ("Memory charged to the kernel's own cgroup (page cache included)",
                            False, lambda u: u.cgroup.charge if u.cgroup else None),
    "memory_limit_bytes": ("The kernel's memory limit ([kernels] memory_max)", False,
                           lambda u: u.cgroup.limit if u.cgroup else None),
    "processes": ("Processes of a kernel's tree, the kernel included", False,
                  lambda u: u.processes),
    "busy": ("1 while the kernel runs code", False, lambda u: u.state == "busy"),
    "idle_seconds": ("Seconds since the kernel's last activity, while it is idle", False,
                     lambda u: u.idle_seconds),
    "restarts": ("New kernel processes under the same kernel id (restarts, deaths)", True,
                 lambda u: u.restarts),
}  # fmt: skip


def _labels(notebook_labels: bool) -> list[str]:
    return ["kernel_id", *(["notebook"] if notebook_labels else [])]


def _ids(notebook_labels: bool) -> Callable[[str, str], list[str]]:
    if notebook_labels:
        return lambda kernel_id, notebook: [kernel_id, notebook]
    return lambda kernel_id, _notebook: [kernel_id]


def per_kernel(snap: Snapshot, notebook_labels: bool) -> Iterator[Metric]:
    labels, ids = _labels(notebook_labels), _ids(notebook_labels)
    for name, (doc, counter, of) in VALUES.items():
        kind = CounterMetricFamily if counter else GaugeMetricFamily
        family = kind(f"jlservice_kernel_{name}", doc, labels=labels)
        for used in snap.notebooks:
            value = of(used)
            if value is not None:
                family.add_metric(ids(used.kernel_id, used.notebook), float(value))
        yield family


def live(snap: Snapshot, view: SupervisorView, notebook_labels: bool) -> Iterator[Metric]:
    labels, ids = _labels(notebook_labels), _ids(notebook_labels)
    ooms = CounterMetricFamily(
        "jlservice_kernel_oom_kills",
        "Processes of a kernel's tree the kernel's OOM killer ended",
        labels=labels,
    )
    # Every kernel has the series from its start (0), so that the first kill is an increase.
    kills = {u.kernel_id: (u.notebook, 0) for u in snap.notebooks}
    for kernel_id, (notebook, count) in dict(view.oom_kills).items():  # the loop adds
        # A kill told before JupyterLab named the kernel's notebook: the round names it.
        kills[kernel_id] = (notebook or kills.get(kernel_id, ("", 0))[0], count)
    for kernel_id, (notebook, count) in kills.items():
        ooms.add_metric(ids(kernel_id, notebook), count)
    yield ooms
    yield CounterMetricFamily(
        "jlservice_oom_kills",
        "Processes of this service the OOM killer ended, kernels' or not",
        value=view.oom_kills_total,
    )
    yield CounterMetricFamily(
        "jlservice_kernels_culled",
        "Idle kernels holding GPU memory shut down ([kernels] cull_idle_gpu)",
        value=view.culled,
    )
    yield CounterMetricFamily(
        "jlservice_kernels_culled_gpu_memory_bytes",
        "GPU memory the culled kernels held",
        value=view.culled_gpu_bytes,
    )
    if snap.sample_seconds is not None:
        yield GaugeMetricFamily(
            "jlservice_sample_duration_seconds",
            "How long the sampler's last round took (JupyterLab's API, /proc, NVML)",
            value=snap.sample_seconds,
        )
