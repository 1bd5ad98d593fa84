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


def point_config_at(
    path: Path | None, section: str, values: dict[str, str], current: dict[str, str]
) -> None:
    """Make the configuration file say `values` in [section]: edit it, or, when there is
    no file or it cannot be written, print the lines to add. `current`: what it says now."""
    from jlservice.config import edit

    if current == values:
        return
    if path is not None:
        try:
            edit.set_keys(path, section, values)
            keys = ", ".join(f"{k} = {v}" for k, v in values.items())
            print(f"{path}: [{section}] {keys}")
            return
        except OSError as exc:
            why = f"cannot write {path} ({exc.strerror})"
    else:
        why = "no configuration file"
    print(f"{why}; add these lines to your configuration file:")
    print(edit.lines_to_add(section, values), end="")


def reload_if_running(args: argparse.Namespace) -> int:
    """Apply the change now if jlservice runs (the same as `jlservice reload`)."""
    service = config.load_service(config_path(args))
    try:
        running = state.supervisor_alive(state.read_state(service.state_dir))
    except state.StateError:
        running = False
    if not running:
        print("jlservice is not running; this applies when it starts")
        return 0
    from jlservice.cli.reload import cmd_reload

    return cmd_reload(args)
