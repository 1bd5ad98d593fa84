"""`jlservice password [--stdin]`: set the password JupyterLab's login page accepts.

The hash (jupyter_server's own argon2 hashing) goes into the 0600 file named by
[auth] password_file; the password itself is never written anywhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jlservice import config, files
from jlservice.cli._client import config_path, reload_if_running
from jlservice.cli.common import point_config_at
from jlservice.config.reader import read_toml
from jlservice.errors import CommandError

DEFAULT_NAME = "password"  # in the state dir, unless [auth] password_file says otherwise


def register(sub, common: argparse.ArgumentParser) -> None:
    password = sub.add_parser(
        "password",
        parents=[common],
        help="set the login password",
        description="Ask for a password twice (without echo), store its hash in [auth] "
        "password_file (default: the state dir's 'password', 0600) and apply it: JupyterLab "
        "then accepts it on its login page, and still the token.",
    )
    password.add_argument(
        "--stdin", action="store_true", help="read the password as one line from stdin"
    )
    password.set_defaults(func=cmd_password)


def cmd_password(args: argparse.Namespace) -> int:
    path = config_path(args)
    target, configured = _password_file(path)
    secret = _read_password(args.stdin)
    from jupyter_server.auth import passwd  # heavy: only here

    hashed = passwd(secret, algorithm="argon2")
    if not configured or not target.parent.exists():  # the state dir, or one it makes
        files.ensure_dir(target.parent, 0o700)
    files.write_atomic(target, hashed.encode() + b"\n", mode=0o600)
    print(f"password hash written to {target}")
    point_config_at(path, "auth", {"password_file": str(target)}, configured)
    return reload_if_running(args)


def _password_file(path: Path | None) -> tuple[Path, dict[str, str]]:
    """Where the hash goes, and what the configuration says about it now."""
    doc = read_toml(str(path)) if path is not None else {}
    auth = doc.get("auth", {})
    named = auth.get("password_file") if isinstance(auth, dict) else None
    if isinstance(named, str) and named:
        target = Path(named)
        if not target.is_absolute() and path is not None:
            target = path.parent / target
        return target, {"password_file": named}
    return config.load_service(path).state_dir / DEFAULT_NAME, {}


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        secret = getpass.getpass("New password: ")
        if secret and getpass.getpass("Repeat it: ") != secret:
            raise CommandError("the passwords differ; nothing changed")
    if not secret:
        raise CommandError("an empty password is not allowed; nothing changed")
    return secret
