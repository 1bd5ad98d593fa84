"""Command line: `jlservice run | token | status | reload | check-config`.

`token` and `status` read the state file and import nothing heavy (no jupyter_server,
structlog, watchdog or pynvml): they must cost little more than starting Python.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from jlservice import EX_CONFIG, __version__, config, state

EX_NOT_RUNNING = 3  # LSB: "program is not running"


class CommandError(Exception):
    """A one-line failure of a sub-command; the exit status travels with it."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except config.ConfigError as exc:
        return _fail(str(exc), EX_CONFIG)
    except (CommandError, state.StateError) as exc:
        return _fail(str(exc), getattr(exc, "status", 1))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # the machine said no: permissions, disk full, …
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)


def _fail(message: str, status: int) -> int:
    print(f"jlservice: {message}", file=sys.stderr)
    return status


def _parser() -> argparse.ArgumentParser:
    config_help = (
        "configuration file (default: $JLSERVICE_CONFIG, else "
        f"{config.DEFAULT_PATH} if it exists, else built-in defaults)"
    )
    # --config is accepted before and after the command; the sub-command's copy must not
    # overwrite a value given before it, hence SUPPRESS.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    parser = argparse.ArgumentParser(
        prog="jlservice",
        description="Run JupyterLab on a server as a proper service.",
    )
    parser.add_argument("--config", metavar="PATH", default=None, help=config_help)
    parser.add_argument("--version", action="version", version=f"jlservice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the supervisor in the foreground",
        description="Start JupyterLab and keep it running: restart it when it "
        "crashes or hangs, end its orphaned kernels, stop it "
        "cleanly on SIGTERM. This is what a unit's ExecStart runs.",
    )
    run.set_defaults(func=cmd_run)

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

    status = sub.add_parser(
        "status",
        parents=[common],
        help="show whether it runs, and how",
        description="Show the supervisor and JupyterLab state. Exit status "
        "0 when running, 3 when not.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

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

    check = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and print the effective one",
        description="Validate the configuration file and print the "
        "effective configuration (defaults filled in). Exit "
        f"status {EX_CONFIG} when invalid.",
    )
    check.set_defaults(func=cmd_check_config)
    return parser


def _config_path(args: argparse.Namespace) -> Path | None:
    return config.locate(args.config, os.environ)


def _running_state(args: argparse.Namespace) -> state.State:
    service = config.load_service(_config_path(args))
    current = state.read_state(service.state_dir)
    if not state.supervisor_alive(current):
        raise CommandError(
            f"jlservice is not running (state in {service.state_dir} says "
            f"{current.status!r}); start it with `jlservice run` or "
            "`systemctl start jlservice`",
            EX_NOT_RUNNING,
        )
    return current


def cmd_token(args: argparse.Namespace) -> int:
    if args.rotate:
        return _rotate(args)
    current = _running_state(args)
    print(state.login_url(current) if args.url else current.token)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    service = config.load_service(_config_path(args))
    current = state.read_state(service.state_dir)
    if not state.supervisor_alive(current):
        state.write_cookie_secret(service.state_dir, state.new_cookie_secret())
        rotated = current.evolve(token=state.new_token())
        state.write_state(service.state_dir, rotated)
        print(rotated.token)
        return 0
    os.kill(current.supervisor_pid, signal.SIGUSR1)
    latest = _wait_state(
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


def cmd_reload(args: argparse.Namespace) -> int:
    service = config.load_service(_config_path(args))
    current = _running_state(args)
    asked = time.time()
    os.kill(current.supervisor_pid, signal.SIGHUP)
    latest = _wait_state(
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
        latest = _wait_state(
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


def _wait_state(state_dir: Path, done, timeout: float, what: str) -> state.State:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = state.read_state(state_dir)
        if done(latest):
            return latest
        if not state.supervisor_alive(latest):
            raise CommandError("jlservice stopped before it could " + what)
        time.sleep(0.05)
    raise CommandError(f"jlservice did not {what} within {timeout:g} s; see `jlservice status`")


def cmd_status(args: argparse.Namespace) -> int:
    service = config.load_service(_config_path(args))
    current = state.read_state(service.state_dir)
    running = state.supervisor_alive(current)
    masked = current.evolve(token=_mask(current.token))
    if args.json:
        report = json.loads(masked.to_json())
        report["running"] = running
        report["login_url"] = state.login_url(masked)
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(_describe(masked, running))
    return 0 if running else EX_NOT_RUNNING


def _mask(token: str) -> str:
    return token[:4] + "…" if token else ""


def _describe(s: state.State, running: bool) -> str:
    now = time.time()
    lines = []
    if running:
        up = _duration(now - s.supervisor_started_at) if s.supervisor_started_at else "?"
        lines.append(f"jlservice:   running (pid {s.supervisor_pid}, up {up})")
    else:
        lines.append("jlservice:   not running")
    lab = s.status if running else "stopped"
    if running and s.lab_pid:
        lab += f" (pid {s.lab_pid}"
        since = s.ready_at if s.status == state.READY else s.started_at
        lab += f", for {_duration(now - since)})" if since else ")"
    lines += [
        f"JupyterLab:  {lab}",
        f"URL:         {state.login_url(s)}",
        f"user:        {s.user}",
        f"notebooks:   {s.notebook_dir}",
        f"config:      {s.config_path or 'built-in defaults'}",
        f"restarts:    {s.restarts}",
    ]
    if s.last_exit:
        e = s.last_exit
        what = f"killed by signal {e.signal}" if e.signal else f"exit status {e.code}"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        lines.append(f"last exit:   {what} at {when} ({e.reason})")
    if s.last_error:
        lines.append(f"last error:  {s.last_error}")
    if running and s.config_error:
        lines.append(f"config error: {s.config_error} (still serving with the previous one)")
    if running and s.reload_pending:
        lines.append(f"reload:      pending, {s.reload_pending}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n] or ["0s"]
    return " ".join(shown[:2])


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args)
    print(config.render(config.load(path)), end="")
    print(f"# {path or 'built-in defaults'}: OK", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    cfg = config.load(_config_path(args))
    from jlservice import run  # heavy: jupyter-facing machinery, structlog, psutil

    return run.run(cfg)
