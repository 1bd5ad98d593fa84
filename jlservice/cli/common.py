"""What several commands share: the one-line error, finding the configuration and state."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from jlservice import config, state

EX_NOT_RUNNING = 3  # LSB: "program is not running"


class CommandError(Exception):
    """A one-line failure of a sub-command; the exit status travels with it."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def config_path(args: argparse.Namespace) -> Path | None:
    return config.locate(args.config, os.environ)


def running_state(args: argparse.Namespace) -> state.State:
    service = config.load_service(config_path(args))
    current = state.read_state(service.state_dir)
    if not state.supervisor_alive(current):
        raise CommandError(
            f"jlservice is not running (state in {service.state_dir} says "
            f"{current.status!r}); start it with `jlservice run` or "
            "`systemctl start jlservice`",
            EX_NOT_RUNNING,
        )
    return current


def wait_state(
    state_dir: Path, done: Callable[[state.State], bool], timeout: float, what: str
) -> state.State:
    """Re-read the state file until `done` holds; fail if the supervisor goes away."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = state.read_state(state_dir)
        if done(latest):
            return latest
        if not state.supervisor_alive(latest):
            raise CommandError("jlservice stopped before it could " + what)
        time.sleep(0.05)
    raise CommandError(f"jlservice did not {what} within {timeout:g} s; see `jlservice status`")


def mask(token: str) -> str:
    return token[:4] + "…" if token else ""
