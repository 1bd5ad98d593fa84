"""A warm start: fork JupyterLab from the warm parent (~0.2 s), cold when it cannot serve."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

from jlservice.start import Secrets, Started, launcher
from jlservice.start.cold import ColdStart, spawn
from jlservice.start.warm.keeper import WarmKeeper


class WarmStart:
    """From the keeper's warm parent when [restart] warm is on and one is ready, else cold."""

    def __init__(
        self, keeper: WarmKeeper, cold: ColdStart, sweep: Callable[[], Awaitable[object]]
    ) -> None:
        """`sweep()`: end what JupyterLab left behind (before a cold start after a fork that
        went wrong)."""
        self.keeper = keeper
        self.cold = cold
        self.sweep = sweep

    async def start(self, launch: launcher.Launch, secrets: Secrets) -> Started:
        """Raises errors.CannotStartNow (worth retrying) or LaunchError (configuration)."""
        if not self.keeper.enabled:
            return await self.cold.start(launch, secrets)
        await self.cold.ready_to_start(launch)
        listen = self.cold.prepare(launch, secrets)
        began, began_monotonic = time.time(), time.monotonic()
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            pid = await self.keeper.fork(launch, write, listen)
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)
        if pid is None:  # the keeper said why
            os.close(read)
            # A warm parent that answered wrongly (it runs as the lab user) may have forked a
            # server all the same: it would hold the port the cold start needs.
            await self.sweep()
            return spawn(launch, listen)
        return Started(
            pid,
            open(read, "rb", buffering=0),
            warm=True,
            began=began,
            began_monotonic=began_monotonic,
        )
