"""`jlservice token [--url | --rotate]`: the login token, read from the state file."""

from __future__ import annotations

import argparse
import os
import signal

from jlservice import config, state
from jlservice.cli.common import CommandError, config_path, running_state, wait_state


def register(sub, common: argparse.ArgumentParser) -> None:
    token = sub.add_parser(
        "token",
        parents=[common],
        help="print the login token",
        description="Print the login token of the running JupyterLab.",
    )
    how = token.add_mutually_exclusive_group()
    how.add_argument("--url", action="store_true", help="print the full login URL instead")
    how.add_argument(
        "--rotate",
        action="store_true",
        help="make a new token and cookie secret (logs every browser out) and "
        "restart JupyterLab with them",
    )
    token.set_defaults(func=cmd_token)


def cmd_token(args: argparse.Namespace) -> int:
    if args.rotate:
        return _rotate(args)
    current = running_state(args)
    print(state.login_url(current) if args.url else current.token)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    service = config.load_service(config_path(args))
    current = state.read_state(service.state_dir)
    if not state.supervisor_alive(current):
        state.write_cookie_secret(service.state_dir, state.new_cookie_secret())
        rotated = current.evolve(token=state.new_token())
        state.write_state(service.state_dir, rotated)
        print(rotated.token)
        return 0
    os.kill(current.supervisor_pid, signal.SIGUSR1)
    latest = wait_state(
        service.state_dir,
        lambda s: (
            s.status == state.FAILED
            or (
                s.token != current.token
                and s.status == state.READY
                and s.lab_pid not in (None, current.lab_pid)
            )
        ),
        300,
        "restart JupyterLab",
    )
    if latest.status == state.FAILED:
        raise CommandError(f"JupyterLab did not come back after rotation: {latest.last_error}")
    print(latest.token)
    return 0
