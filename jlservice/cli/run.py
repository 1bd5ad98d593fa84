"""`jlservice run`: the supervisor in the foreground (what a unit's ExecStart runs)."""

from __future__ import annotations

import argparse

from jlservice import config
from jlservice.cli._client import config_path


def register(sub, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the supervisor in the foreground",
        description="Start JupyterLab and keep it running: restart it when it "
        "crashes or hangs, end its orphaned kernels, stop it "
        "cleanly on SIGTERM. This is what a unit's ExecStart runs.",
    )
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(config_path(args))
        from jlservice.supervisor import main  # heavy: jupyter-facing machinery, structlog, psutil

        code = main.run(cfg)
        from jlservice import log

        log.flush()  # what the log writer still holds, unless its reader stays stuck
        if code:  # the supervisor's last STATUS= (why it gave up) must reach systemd first
            from jlservice.supervisor.notify import Notifier

            Notifier().barrier()
        return code
    except config.ConfigError as exc:
        from jlservice.supervisor.notify import Notifier

        # `systemctl status` shows it, not only the journal.
        Notifier().last_words(f"configuration error: {exc}")
        raise
