"""`jlservice check-config`: validate the configuration and print the effective one."""

from __future__ import annotations

import argparse
import sys

from jlservice import EX_CONFIG, config
from jlservice.cli._client import config_path


def register(sub, common: argparse.ArgumentParser) -> None:
    check = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and print the effective one",
        description="Validate the configuration file and print the "
        "effective configuration (defaults filled in). Exit "
        f"status {EX_CONFIG} when invalid.",
    )
    check.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args)
    print(config.render(config.load(path)), end="")
    print(f"# {path or 'built-in defaults'}: OK", file=sys.stderr)
    return 0
