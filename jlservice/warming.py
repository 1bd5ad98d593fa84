"""How the supervisor starts JupyterLab: from the warm parent when it can, else cold.

Mixed into Supervisor, whose state (config, launch, token, keeper…) and sweep it uses.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from jlservice import launcher
from jlservice.warm.keeper import Keeper


class Warming:
    keeper: Keeper

    async def _spawn_lab(self) -> tuple[int, BinaryIO, bool]:
        """Start the current launch: (pid, its output pipe, whether it started warm).

        Raises launcher.CannotStartNow or LaunchError, as a cold start does.
        """
        launch = self.launch
        launcher.prepare(launch, self.config.service.runtime_dir, self.token, self.cookie_secret)
        if self.config.restart.warm:
            read, write = os.pipe2(os.O_CLOEXEC)
            try:
                pid = await self.keeper.fork(launch, write)
            except BaseException:
                os.close(read)
                raise
            finally:
                os.close(write)
            if pid is not None:
                return pid, open(read, "rb", buffering=0), True
            os.close(read)
            # A warm parent that answered wrongly (it runs as the lab user) may have forked a
            # server all the same: it would hold the port the cold start needs.
            await self._sweep()
        return (*launcher.detach(launcher.spawn(launch)), False)

    def _keep_warm(self) -> None:
        """Have a warm parent for the current launch (or none, if [restart] warm is off)."""
        self.keeper.prepare(self.launch, self.config.restart.warm)

    def _warm_changed(self) -> None:
        self.figures.warm_parent = warm = self.keeper.describe()
        self._save(warm_parent=warm)
