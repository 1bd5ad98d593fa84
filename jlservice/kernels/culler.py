"""[kernels] cull_idle_gpu: shut down kernels that hold GPU memory and have been idle longer
than that (off by default). Never a busy kernel: JupyterLab is asked again, just before, that
the kernel is still idle with no activity since the round that chose it. A kernel a tab is
connected to is spared unless [kernels] cull_connected (as JupyterLab's own culler does):
someone who left a tab open may come back to its variables.

A collaborator of the loop: each sampler round it chooses, shuts down off the loop (a
blocking HTTP call in a thread), logs and posts KernelCulled for the Publisher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from jlservice import labapi, log
from jlservice.config import KernelsConfig
from jlservice.labapi import Endpoint
from jlservice.metrics.sampler import Snapshot
from jlservice.supervisor.events import Event, KernelCulled

logger = log.get("jlservice.kernels")

ASK_TIMEOUT_S = 10.0


class Culler:
    def __init__(
        self,
        post: Callable[[Event], None],
        settings: KernelsConfig,
        endpoint: Callable[[], Endpoint | None],
        shut_down: Callable[[Endpoint, str, float, float], bool] = labapi.shut_down_if_idle,
    ) -> None:
        self._post = post
        self.settings = settings  # replaced on reload
        self._endpoint = endpoint
        self._shut_down = shut_down
        self._busy: set[str] = set()  # being shut down now
        self._tasks: set[asyncio.Task[None]] = set()

    def sampled(self, snap: Snapshot) -> None:
        threshold = self.settings.cull_idle_gpu
        endpoint = self._endpoint()
        if threshold <= 0 or endpoint is None:
            return
        held: dict[str, int] = {}
        for memory in snap.kernel_memory:
            held[memory.kernel_id] = held.get(memory.kernel_id, 0) + memory.bytes
        for used in snap.notebooks:
            idle = used.idle_seconds
            since = used.last_activity  # a cell run after it keeps the kernel
            if (
                used.state != "idle"
                or idle is None
                or since is None
                or idle < threshold
                or held.get(used.kernel_id, 0) <= 0
                or (used.connections and not self.settings.cull_connected)
                or used.kernel_id in self._busy
            ):
                continue
            self._busy.add(used.kernel_id)
            task = asyncio.get_running_loop().create_task(
                self._cull(
                    endpoint, used.kernel_id, used.notebook, idle, held[used.kernel_id], since
                )
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _cull(
        self,
        endpoint: Endpoint,
        kernel_id: str,
        notebook: str,
        idle: float,
        freed: int,
        since: float,
    ) -> None:
        try:
            done = await asyncio.to_thread(
                self._shut_down, endpoint, kernel_id, since, ASK_TIMEOUT_S
            )
        finally:
            self._busy.discard(kernel_id)
        if not done:
            return
        logger.warning(
            "kernel_culled",
            kernel_id=kernel_id,
            notebook=notebook or None,
            idle_s=round(idle),
            gpu_memory_freed_bytes=freed,
            reason=f"idle over [kernels] cull_idle_gpu = {self.settings.cull_idle_gpu:g} s",
        )
        self._post(KernelCulled(kernel_id, notebook, freed, time.time()))

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
