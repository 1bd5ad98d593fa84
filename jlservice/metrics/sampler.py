"""The sampler thread: every `interval` seconds, GPUs and kernels into one immutable Snapshot,
with the round's series already formatted (`render`, metrics.exposition).

A scrape reads `Sampler.snapshot` (one attribute read) and never waits for NVML or for
JupyterLab. Nothing the sampler meets may end it, let alone the supervisor.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jlservice import disk, labapi, log
from jlservice.config import MetricsConfig
from jlservice.kernels.cgroups import Cgroup
from jlservice.labapi import Endpoint
from jlservice.metrics import proctree, usage
from jlservice.metrics.exposition import Rendered
from jlservice.metrics.gpu import GpuReader, GpuSample
from jlservice.metrics.view import SupervisorView

logger = log.get("jlservice.metrics")

_HTTP_TIMEOUT = 2.0
_STATVFS_TIMEOUT = 1.0  # a network filesystem that does not answer by then is not read


@dataclass(frozen=True)
class KernelMemory:
    gpu: int
    uuid: str
    kernel_id: str
    notebook: str
    bytes: int


@dataclass(frozen=True)
class Snapshot:
    lab_version: str = ""  # of the last JupyterLab that answered
    kernel_states: dict[str, int] | None = None  # None: JupyterLab did not answer
    gpus: tuple[GpuSample, ...] | None = None  # None: NVML not usable (or gpu = false)
    kernel_memory: tuple[KernelMemory, ...] = ()
    other_memory: tuple[tuple[int, str, int], ...] = ()  # (gpu, uuid, bytes)
    gpu_enabled: bool = False
    collect_seconds: float | None = None
    notebook_space: disk.Space | None = None  # None: the filesystem did not answer
    notebooks: tuple[usage.Usage, ...] = ()  # each kernel's tree, by kernel id
    owners: dict[int, str] = field(default_factory=dict)  # pid → kernel id, for this round
    kernels: frozenset[str] = frozenset()  # the ids of every kernel JupyterLab listed
    notebook_labels: bool = True  # [metrics] notebook_labels, as the round was taken
    at: float = 0.0  # when it was taken (Unix time)
    sample_seconds: float | None = None  # how long the round took (HTTP, /proc, NVML)
    rendered: Rendered = field(default_factory=Rendered)  # the round's own series, formatted


def attribute(
    gpus: tuple[GpuSample, ...], notebooks: dict[str, str], owner: Callable[[int], str | None]
) -> tuple[tuple[KernelMemory, ...], tuple[tuple[int, str, int], ...]]:
    """GPU memory per (GPU, kernel), and per GPU what no kernel of this JupyterLab holds."""
    per_kernel: dict[tuple[int, str, str], int] = {}
    other = []
    for gpu in gpus:
        if not gpu.up:
            continue
        rest = 0
        for pid, used in gpu.processes:
            kernel_id = owner(pid)
            if kernel_id is None:
                rest += used
            else:
                key = (gpu.index, gpu.uuid, kernel_id)
                per_kernel[key] = per_kernel.get(key, 0) + used
        other.append((gpu.index, gpu.uuid, rest))
    held = tuple(
        KernelMemory(index, uuid, kernel_id, notebooks.get(kernel_id, ""), used)
        for (index, uuid, kernel_id), used in per_kernel.items()
    )
    return held, tuple(other)


class Sampler:
    def __init__(
        self,
        view: SupervisorView,
        settings: MetricsConfig,
        render: Callable[[Snapshot], Rendered] = lambda _snapshot: Rendered(),
    ) -> None:
        self.view = view
        self.settings = settings  # replaced on reload; read once per round
        self._render = render
        self.snapshot = Snapshot()
        self._gpus = GpuReader()
        self._lab_version: tuple[int, str] = (0, "")  # (JupyterLab pid, its version)
        self._space_low = False  # as last logged
        self._render_failed = False  # as last logged
        self._accounting = usage.Accounting()
        # Set by the supervisor: the kernel's own cgroup (limits), and who hears of each round.
        self.cgroup: Callable[[str], Cgroup | None] = lambda _id: None
        self.on_round: Callable[[Snapshot], None] = lambda _snapshot: None
        self._wake = threading.Event()
        self._stopped: threading.Event | None = None  # set: the running thread must end
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._stopped is not None

    def start(self) -> None:
        if self._thread is not None:  # stopped by a reload: NVML is for one thread at a time
            self._thread.join(timeout=5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stopped,), name="jlservice-metrics", daemon=True
        )
        self._thread.start()

    def update(self, settings: MetricsConfig) -> None:
        """New settings: sample again now, then every new interval."""
        self.settings = settings
        self.wake()

    def wake(self) -> None:
        """Sample now (a new JupyterLab answers, or new settings)."""
        self._wake.set()

    def stop(self) -> None:
        """Without waiting: a round in progress (HTTP, NVML) ends on its own."""
        if self._stopped is not None:
            self._stopped.set()
            self._wake.set()
            self._stopped = None

    def _run(self, stopped: threading.Event) -> None:
        while not stopped.is_set():
            try:
                snapshot = self.take()
            except Exception:  # a bug here must cost the metrics, never the supervisor
                logger.exception("metrics_sample_failed")
            else:
                if not stopped.is_set():
                    self.snapshot = snapshot
                    self.on_round(snapshot)
            self._wake.wait(self.settings.interval)
            self._wake.clear()

    def take(self) -> Snapshot:
        settings = self.settings
        endpoint = self.view.endpoint
        began = time.perf_counter()
        found = None
        if endpoint is not None:
            # Without notebook labels, the sessions API (notebook paths) is not even read.
            found = labapi.fetch(endpoint, _HTTP_TIMEOUT, sessions=settings.notebook_labels)
            if self._lab_version[0] != endpoint.pid:
                version = labapi.lab_version(endpoint, _HTTP_TIMEOUT)
                self._lab_version = (endpoint.pid if version else 0, version or "")
        space = self._notebook_space()
        notebooks = found.notebooks if found else {}
        used, owners = self._account(endpoint, found)
        snapshot = Snapshot(
            lab_version=self._lab_version[1],
            kernel_states=found.states if found else None,
            notebook_space=space,
            notebooks=used,
            owners=owners,
            kernels=frozenset(notebooks),
            notebook_labels=settings.notebook_labels,
            at=time.time(),
        )
        if settings.gpu:
            gpu_began = time.perf_counter()
            gpus = self._gpus.sample()
            held, other = attribute(gpus or (), notebooks, owners.get)
            snapshot = dataclasses.replace(
                snapshot,
                gpus=gpus,
                kernel_memory=held,
                other_memory=other,
                gpu_enabled=True,
                collect_seconds=time.perf_counter() - gpu_began,
            )
        return self.formatted(
            dataclasses.replace(snapshot, sample_seconds=time.perf_counter() - began)
        )

    def formatted(self, snapshot: Snapshot) -> Snapshot:
        """`snapshot` with its own series formatted, as a scrape serves them. Should that
        fail, the round goes on (the culler, the OOM counts) and scrapes lack the kernels'
        series, rather than serve an older round's as the current one."""
        try:
            rendered = self._render(snapshot)
        except Exception:
            if not self._render_failed:
                logger.exception("metrics_render_failed")
            self._render_failed = True
            rendered = Rendered()
        else:
            self._render_failed = False
        return dataclasses.replace(snapshot, rendered=rendered)

    def _account(
        self, endpoint: Endpoint | None, found: labapi.Kernels | None
    ) -> tuple[tuple[usage.Usage, ...], dict[int, str]]:
        """One pass over /proc: each kernel's tree; nothing while no JupyterLab answers."""
        if endpoint is None or found is None:
            return (), {}
        table = proctree.scan()
        roots = usage.kernel_roots(table, endpoint, set(found.notebooks), os.getpid())
        used = self._accounting.round(
            table, roots, found.activity, found.notebooks, time.time(), self.cgroup
        )
        return used, usage.owners(table, roots)

    def _notebook_space(self) -> disk.Space | None:
        path = self.view.notebook_dir
        space = disk.read_space(path, _STATVFS_TIMEOUT)
        if space is not None and space.low != self._space_low:
            self._space_low = space.low
            if space.low:
                logger.warning(
                    "notebook_dir_space_low",
                    path=path,
                    space=space.describe(),
                    effect="saving notebooks and files may soon fail",
                )
            else:
                logger.info("notebook_dir_space_ok", path=path, space=space.describe())
        return space
