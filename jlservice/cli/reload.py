"""`jlservice reload`: SIGHUP the running supervisor and report what the reload did."""

from __future__ import annotations

import argparse
import os
import signal
import time

from jlservice import EX_CONFIG, config, state
from jlservice.cli.common import CommandError, config_path, running_state, wait_state


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


def cmd_reload(args: argparse.Namespace) -> int:
    service = config.load_service(config_path(args))
    current = running_state(args)
    asked = time.time()
    os.kill(current.supervisor_pid, signal.SIGHUP)
    latest = wait_state(
        service.state_dir,
        lambda s: s.last_reload is not None and s.last_reload.at >= asked - 0.01,
        30,
        "answer the reload",
    )
    result = latest.last_reload.result
    if result == "rejected":
        raise CommandError(
            f"configuration rejected, JupyterLab keeps its settings: {latest.config_error}",
            EX_CONFIG,
        )
    if result == "pending":
        print(f"reload pending: {latest.reload_pending}")
        return 0
    if result == "applied":
        latest = wait_state(
            service.state_dir,
            lambda s: s.status in (state.READY, state.FAILED) and s.lab_pid != current.lab_pid,
            300,
            "restart JupyterLab",
        )
        if latest.status == state.FAILED:
            raise CommandError(f"reloaded, but JupyterLab failed: {latest.last_error}")
        print(f"reloaded: JupyterLab restarted with the new settings ({latest.url})")
        return 0
    print("reloaded: nothing JupyterLab sees changed, so it kept running")
    return 0
