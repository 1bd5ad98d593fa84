"""Throw-away unprivileged accounts (as root), removed with their home afterwards."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator

from jlservice import users


@contextlib.contextmanager
def throwaway_user(prefix: str = "jlst") -> Iterator[users.Account]:
    name = prefix + secrets.token_hex(3)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    try:
        account = users.lookup(name)
        assert account is not None
        yield account
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
