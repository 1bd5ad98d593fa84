"""Command line: `jlservice COMMAND`, one module per command in this package.

Every command module must stay light to import (no jupyter_server, structlog, watchdog or
pynvml at module level): the parser imports them all, and `token` and `status` must cost
little more than starting Python.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from jlservice import EX_CONFIG, __version__, config, state
from jlservice.cli import (
    cert,
    check_config,
    doctor,
    install,
    nginx,
    password,
    reload,
    run,
    status,
    token,
    top,
)
from jlservice.errors import CommandError
from jlservice.text import escape_controls

COMMANDS = (run, token, status, top, reload, check_config, install, password, cert, nginx, doctor)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except config.ConfigError as exc:
        return _fail(str(exc), EX_CONFIG)
    except (CommandError, state.StateError) as exc:
        return _fail(str(exc), getattr(exc, "status", 1))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `jlservice status | head -3`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # the machine said no: permissions, disk full, …
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", 1)


def _fail(message: str, status: int) -> int:
    print(f"jlservice: {escape_controls(message)}", file=sys.stderr)
    return status


def _parser() -> argparse.ArgumentParser:
    config_help = (
        "configuration file (default: $JLSERVICE_CONFIG, else for a user other than root "
        "~/.config/jlservice/jlservice.toml if it exists, else "
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
    for command in COMMANDS:
        command.register(sub, common)
    return parser
