"""A cold start: a new JupyterLab process, which imports everything itself (~2 s)."""

from __future__ import annotations

import time
from pathlib import Path

from jlservice.start import Secrets, Started, launcher


class ColdStart:
    """Start the launch's command as a new process."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir

    async def start(self, launch: launcher.Launch, secrets: Secrets) -> Started:
        return self.start_now(launch, secrets)

    def start_now(self, launch: launcher.Launch, secrets: Secrets) -> Started:
        """Synchronous and light, so that `jlservice run` can start JupyterLab before its
        own heavier imports. Raises launcher.CannotStartNow (worth retrying) or
        LaunchError (a configuration problem)."""
        launcher.prepare(launch, self.runtime_dir, *secrets)
        return spawn(launch)


def spawn(launch: launcher.Launch) -> Started:
    """Spawn a launch whose private dir is prepared."""
    began = time.time()
    pid, output = launcher.detach(launcher.spawn(launch))
    return Started(pid, output, warm=False, began=began)
