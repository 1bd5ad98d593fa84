"""How a command finds the running supervisor and talks to it: through its state file and
its signals, never by importing it."""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from jlservice import EX_CONFIG, config, state
from jlservice.errors import CommandError

EX_NOT_RUNNING = 3  # LSB: "program is not running"


def config_path(args: argparse.Namespace) -> Path | None:
    return config.locate(args.config, os.environ)


def published(service: config.ServiceConfig) -> state.State:
    """What the supervisor published last (raises StateError)."""
    return state.read_published(service.state_dir, service.runtime_dir)


def running_state(args: argparse.Namespace) -> state.State:
    service = config.load_service(config_path(args))
    current = published(service)
    if not state.supervisor_alive(current):
        raise CommandError(
            f"jlservice is not running (state in {service.state_dir} says "
            f"{current.status!r}); start it with `jlservice run` or "
            "`systemctl start jlservice`",
            EX_NOT_RUNNING,
        )
    return current


def wait_state(
    service: config.ServiceConfig,
    done: Callable[[state.State], bool],
    timeout: float,
    what: str,
) -> state.State:
    """Re-read the state file until `done` holds; fail if the supervisor goes away."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = published(service)
        if done(latest):
            return latest
        if not state.supervisor_alive(latest):
            raise CommandError("jlservice stopped before it could " + what)
        time.sleep(0.05)
    raise CommandError(f"jlservice did not {what} within {timeout:g} s; see `jlservice status`")


def reload(args: argparse.Namespace) -> int:
    """SIGHUP the running supervisor and report what the reload did."""
    service = config.load_service(config_path(args))
    current = running_state(args)
    os.kill(current.supervisor_pid, signal.SIGHUP)
    latest = wait_state(
        service,
        lambda s: _answers(s, current),
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
        return _restarted(service, current)
    return _unchanged(service, current, latest)


def _restarted(service: config.ServiceConfig, asked: state.State) -> int:
    latest = wait_state(
        service,
        lambda s: s.status in (state.READY, state.FAILED) and s.lab_pid != asked.lab_pid,
        300,
        "restart JupyterLab",
    )
    if latest.status == state.FAILED:
        raise CommandError(f"reloaded, but JupyterLab failed: {latest.last_error}")
    print(f"reloaded: JupyterLab restarted with the new settings ({latest.url})")
    return 0


def _unchanged(service: config.ServiceConfig, asked: state.State, answer: state.State) -> int:
    """Nothing changed since the last reload. JupyterLab kept running, or it was not serving
    all along: the file watch applied the saved file first and restarts it (people edit,
    then reload out of habit), or it crashed, or it backs off."""
    if asked.status == answer.status == state.READY and answer.lab_pid == asked.lab_pid:
        print("reloaded: nothing JupyterLab sees changed, so it kept running")
        return 0
    latest = wait_state(
        service,
        lambda s: s.status in (state.READY, state.BACKOFF, state.FAILED),
        300,
        "have JupyterLab serving again",
    )
    if latest.status != state.READY:
        why = latest.last_error or latest.status
        print(f"reloaded: nothing JupyterLab sees changed; it is not serving ({why})")
        return 0
    print(f"reloaded: JupyterLab restarted meanwhile and serves these settings ({latest.url})")
    return 0


def _answers(record: state.State, asked: state.State) -> bool:
    """Whether `record` holds the supervisor's answer to a reload asked of it at `asked`.
    A supervisor that does not number its records (an older jlservice still running after
    an upgrade) is taken at its word: a new answer is a different one."""
    if state.writer(record) != state.writer(asked):
        raise CommandError("jlservice restarted before it answered; see `jlservice status`")
    if record.last_reload is None:
        return False
    if asked.sequence == 0:
        return record.last_reload != asked.last_reload
    return record.last_reload.sequence > asked.sequence


def reload_if_running(args: argparse.Namespace) -> int:
    """Apply the change now if jlservice runs (the same as `jlservice reload`)."""
    service = config.load_service(config_path(args))
    try:
        running = state.supervisor_alive(published(service))
    except state.StateError:
        running = False
    if not running:
        print("jlservice is not running; this applies when it starts")
        return 0
    return reload(args)
