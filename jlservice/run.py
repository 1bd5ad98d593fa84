"""`jlservice run`: start JupyterLab, then the supervisor loop that keeps it running.

JupyterLab is started before the supervisor's own heavier imports (asyncio, structlog,
psutil, the supervisor): its ~2 s cold start then overlaps them instead of waiting for them.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from jlservice import launcher, state
from jlservice.config import Config, ConfigError

if TYPE_CHECKING:
    import subprocess


def run(config: Config) -> int:
    service = config.service
    launch = launcher.build(config)
    for name, mode in (("state_dir", 0o700), ("runtime_dir", launcher.runtime_dir_mode(launch))):
        try:
            state.ensure_dir(getattr(service, name), mode)
        except OSError as exc:
            raise ConfigError(f"[service] {name}: {exc.strerror}") from None
    secrets = state.load_secrets(service.state_dir, launch.account.uid, launch.account.name)
    launcher.become_subreaper()  # before the first child: its orphans must come back to us
    # Until the loop takes over, a stop, reload or rotation request is kept, not fatal.
    early_signals: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, lambda received, _frame: early_signals.append(received))
    try:
        started: subprocess.Popen[bytes] | Exception = launcher.start(
            launch, service.runtime_dir, secrets.token, secrets.cookie_secret
        )
    except (launcher.CannotStartNow, launcher.LaunchError) as exc:
        started = exc  # the supervisor reports it, in its log and state, like any later start

    import asyncio

    from jlservice import log
    from jlservice.supervisor import Supervisor

    log.configure(config.log.level, config.log.format)
    return asyncio.run(Supervisor(config, launch, secrets, started, early_signals).run())
