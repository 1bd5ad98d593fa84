"""Which kernels [kernels] cull_idle_gpu shuts down (kernels.culler), with fakes."""

from __future__ import annotations

import asyncio

from jlservice.config import KernelsConfig
from jlservice.kernels.culler import Culler
from jlservice.labapi import Endpoint
from jlservice.metrics.sampler import KernelMemory, Snapshot
from jlservice.metrics.usage import Usage

LAB = Endpoint("http://127.0.0.1:1/api", "t", 1, 1, "/")


def _usage(kernel_id: str, state: str = "idle", idle: float | None = 100.0, tabs: int = 0):
    last = 1000.0 - idle if idle is not None else None  # the round is at 1000.0
    return Usage(
        kernel_id, f"{kernel_id}.ipynb", 1, state, idle, tabs, 1.0, 0.0, 1, 1, 0, None, last
    )


def _culled(settings: KernelsConfig, *used: Usage, gpu: tuple[str, ...] = ()) -> list[str]:
    asked: list[str] = []
    posted: list = []

    def shut_down(endpoint, kernel_id, since, timeout) -> bool:
        asked.append(kernel_id)
        # Exactly its last activity as JupyterLab said it: one a second later keeps it.
        assert since == next(u.last_activity for u in used if u.kernel_id == kernel_id)
        return True

    async def round_() -> None:
        culler = Culler(posted.append, settings, lambda: LAB, shut_down)
        memory = tuple(KernelMemory(0, "GPU-a", k, "", 1 << 30) for k in gpu)
        culler.sampled(Snapshot(notebooks=used, kernel_memory=memory, at=1000.0))
        await asyncio.gather(*culler._tasks)

    asyncio.run(round_())
    assert [e.kernel_id for e in posted] == asked
    return asked


def test_off_by_default() -> None:
    assert KernelsConfig().cull_idle_gpu == 0
    assert _culled(KernelsConfig(), _usage("a"), gpu=("a",)) == []


def test_only_idle_gpu_holders_past_the_threshold() -> None:
    on = KernelsConfig(cull_idle_gpu=60)
    kernels = (
        _usage("holder"),  # idle 100 s with GPU memory: culled
        _usage("no-gpu"),  # idle, holds nothing on the GPU
        _usage("recent", idle=30.0),  # idle, but not for long enough
        _usage("busy", state="busy", idle=None),
        _usage("starting", state="starting", idle=None),
        _usage("tab", tabs=1),  # a tab is connected
    )
    assert _culled(on, *kernels, gpu=("holder", "recent", "busy", "starting", "tab")) == ["holder"]
    everyone = KernelsConfig(cull_idle_gpu=60, cull_connected=True)
    assert _culled(everyone, *kernels, gpu=("holder", "tab")) == ["holder", "tab"]
