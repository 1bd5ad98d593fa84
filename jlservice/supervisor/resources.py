"""What `jlservice run` sets up for each notebook's resources, around the supervisor loop:
the OOM order and the kernels' cgroups before the first child; then the OOM watch on the
kernel log (which tells JupyterLab's tabs of a kernel's kill), the socket that places each
new kernel in its cgroup, and new [kernels] settings on reload. It speaks to the loop only
through the events its parts post."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jlservice import log, oom_score
from jlservice.config import KernelsConfig
from jlservice.kernels import cgroups, limits
from jlservice.start.launcher import Launch

if TYPE_CHECKING:
    from jlservice.metrics.exporter import Exporter
    from jlservice.metrics.sampler import Snapshot
    from jlservice.metrics.view import SupervisorView
    from jlservice.supervisor.events import Event

logger = log.get("jlservice.kernels")


@dataclass
class Early:
    """Done before jlservice starts any child (children inherit both)."""

    unprotected: str | None  # why jlservice could not lower its oom_score_adj
    limits: limits.Limits | None
    limits_said: str  # "on: …" or "off: why"


def before_children(kernels: KernelsConfig, launch: Launch) -> Early:
    unprotected = oom_score.protect_self()
    found, said = limits.set_up(kernels.memory_max, launch.keep_kernels)
    return Early(unprotected, found, said)


class Resources:
    def __init__(
        self,
        early: Early,
        post: Callable[[Event], None],
        exporter: Exporter,
        view: SupervisorView,
        kernels: KernelsConfig,
        keeps_kernels: bool,
    ) -> None:
        from jlservice.kernels.culler import Culler
        from jlservice.kernels.labnotice import LabNotice
        from jlservice.kernels.oom import OomWatch
        from jlservice.kernels.placer import Placer

        self.early = early
        self.placer = Placer(early.limits) if keeps_kernels else None
        if early.limits is not None:
            exporter.sampler.cgroup = early.limits.cgroup
        memory = cgroups.memory()
        self.notice = LabNotice(lambda: view.endpoint)
        self.watch = OomWatch(
            post,
            lambda: exporter.sampler.snapshot,
            lambda: view.endpoint,
            memory.limit if memory is not None else lambda _cgroup: None,
            self.placer.names if self.placer is not None else dict,
            kernels_cgroup=f"{early.limits.base}/{limits.KERNELS}" if early.limits else None,
            kills=early.limits.oom_kills if early.limits else lambda _kernel_id: None,
            tell_lab=self.notice.oom_killed,
        )
        self.culler = Culler(post, kernels, lambda: view.endpoint)

    async def start(self, launch: Launch, memory_max: int | None) -> None:
        early = self.early
        if early.unprotected:
            logger.warning(
                "oom_protection_off",
                problem=f"{early.unprotected}; the OOM killer may take JupyterLab or jlservice "
                "before a kernel, and a notebook may lower its kernel's score (run jlservice "
                "as root with CAP_SYS_RESOURCE, which this container or unit withholds)",
            )
        if memory_max is not None and early.limits is None:
            logger.warning("kernel_limits_off", problem=early.limits_said)
        else:
            logger.info("kernel_limits", limits=early.limits_said)
        problem = self.watch.start(asyncio.get_running_loop())
        if problem is not None:
            logger.warning(
                "oom_kills_unseen",
                problem=f"{problem}; jlservice cannot say which notebook the OOM killer hit "
                "(run it as root)",
            )
        if self.placer is not None:
            await self.placer.start(launch.limits_socket, launch.account)

    def sampled(self, snapshot: Snapshot) -> None:
        """In the loop's thread, after each sampler round."""
        self.watch.sampled(snapshot)
        self.culler.sampled(snapshot)
        if self.placer is not None:
            self.placer.seen(snapshot.owners)

    def lab_started(self, pid: int, launch: Launch) -> None:
        if self.placer is not None:
            self.placer.serve_for(pid, launch)

    def apply(self, kernels: KernelsConfig) -> str:
        """New [kernels] settings (a reload): a new memory_max holds for running kernels too;
        what the limits are now."""
        self.culler.settings = kernels
        found = self.early.limits
        if found is not None and kernels.memory_max != found.memory_max:
            found.apply(kernels.memory_max)
            self.early.limits_said = found.describe()
            logger.info("kernel_limits", limits=self.early.limits_said)
        elif found is None and kernels.memory_max is not None:
            logger.warning("kernel_limits_off", problem=self.early.limits_said)
        return self.early.limits_said

    def close(self) -> None:
        self.watch.close()
        self.notice.close()
        self.culler.close()
        if self.placer is not None:
            self.placer.close()
