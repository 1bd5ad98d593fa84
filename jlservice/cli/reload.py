"""`jlservice reload`: SIGHUP the running supervisor and report what the reload did."""

from __future__ import annotations

import argparse

from jlservice import EX_CONFIG
from jlservice.cli._client import reload as cmd_reload


def register(sub, common: argparse.ArgumentParser) -> None:
    reload = sub.add_parser(
        "reload",
        parents=[common],
        help="apply the configuration file now (like SIGHUP)",
        description="Ask the running supervisor to re-read its configuration file (the same "
        "as SIGHUP or `systemctl reload jlservice`). JupyterLab restarts only if a "
        "setting it sees has changed; an invalid file is rejected and the running "
        f"server keeps its settings (exit status {EX_CONFIG}). --config only "
        "locates the running supervisor's state.",
    )
    reload.set_defaults(func=cmd_reload)
