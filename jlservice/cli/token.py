"""`jlservice token [--url | --ssh [USER@HOST] | --rotate]`: the login token, read from the
state file."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from jlservice import config, login, net, state
from jlservice.cli._client import config_path, published, running_state, wait_state
from jlservice.errors import CommandError

SSH_LOCAL_PORT = 8888


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
        "--ssh",
        nargs="?",
        const="",
        metavar="USER@HOST",
        help="print the SSH tunnel command to run on your own machine, and the local URL "
        "to open once it runs (default USER@HOST: the lab user at this machine's name)",
    )
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
    if current.state_error:  # what it prints is current; the file that keeps it is not
        print(f"jlservice: warning: {current.state_error}", file=sys.stderr)
    if args.ssh is not None:
        import socket

        print(ssh_tunnel(current, args.ssh or f"{current.user}@{socket.gethostname()}"))
    elif args.url:
        print(state.login_url(current))
    elif not current.token_login:
        raise CommandError(
            "token login is off ([auth] token = false): log in with the password at "
            + state.login_url(current)
        )
    else:
        print(current.token)
    return 0


def ssh_tunnel(current: state.State, destination: str) -> str:
    """The tunnel command (first line) and the URL that works while it runs (second)."""
    target = net.bracket(net.reachable_host(current.ip))
    local = f"{current.scheme}://127.0.0.1:{SSH_LOCAL_PORT}{current.base_url}"
    return (
        f"ssh -N -L {SSH_LOCAL_PORT}:{target}:{current.port} {destination}\n"
        f"then open {state.login_url(current, local)}"
    )


def _rotate(args: argparse.Namespace) -> int:
    service = config.load_service(config_path(args))
    current = published(service)
    if not state.supervisor_alive(current):  # the next start uses the new secrets
        token = login.new_token()
        login.save_secrets(service.state_dir, token, login.new_cookie_secret())
        print(token)
        return 0
    os.kill(current.supervisor_pid, signal.SIGUSR1)
    latest = wait_state(
        service,
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
