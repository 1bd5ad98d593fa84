"""The login secrets in the state dir: the token and the cookie secret JupyterLab is given,
kept across restarts for the lab user they were handed to."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

from jlservice import files
from jlservice.state import State, StateError, read_state

TOKEN_FILE = "token"
COOKIE_SECRET_FILE = "cookie_secret"


# secrets and base64 are imported where a secret is made, not on the `jlservice token` path.
# secrets and base64 are imported where a secret is made, not on the `jlservice token` path.
def new_token() -> str:
    import secrets

    return secrets.token_hex(32)


def new_cookie_secret() -> bytes:
    import base64
    import secrets

    return base64.b64encode(secrets.token_bytes(48))


class Secrets(NamedTuple):
    """What JupyterLab is given to log people in with."""

    token: str
    cookie_secret: bytes


def load_secrets(state_dir: Path, lab_uid: int, lab_user: str) -> tuple[Secrets, str | None]:
    """The token and cookie secret of the previous run (so logged-in browsers stay logged
    in) if they were handed to the lab user `lab_uid`, else new ones, saved at once; and,
    when kept ones were replaced, whom they had been handed to (for the log).

    The lab user can read both (JupyterLab needs them), so a new lab user never inherits
    them: the old one could log in to the new one's JupyterLab, or forge its cookies.
    """
    try:
        kept = read_state(state_dir)
    except StateError:  # a first start (or a damaged state): no kept token to honour
        kept = None
    if kept is not None and _handed_to(kept, lab_uid, lab_user):
        token = load_or_create_token(state_dir)
        return Secrets(token, load_or_create_cookie_secret(state_dir)), None
    secrets = Secrets(new_token(), new_cookie_secret())
    with contextlib.suppress(OSError):  # a full disk: in use all the same, said by the state
        save_secrets(state_dir, *secrets)
    return secrets, _holder(kept)


def _handed_to(kept: State, lab_uid: int, lab_user: str) -> bool:
    if kept.lab_uid is None:  # written before jlservice recorded the uid: the name says
        return kept.user == lab_user
    return type(kept.lab_uid) is int and kept.lab_uid == lab_uid


def _holder(kept: State | None) -> str | None:
    """Who was handed the kept secrets, for the log (None: nobody, a first start)."""
    if kept is None:
        return None
    if type(kept.lab_uid) is not int:
        return f"{kept.user} (uid not recorded)"
    return f"{kept.user} (uid {kept.lab_uid})"


def load_or_create_token(state_dir: Path) -> str:
    """The token of the previous run (so logged-in browsers stay logged in), else a new one."""
    try:
        token = (state_dir / TOKEN_FILE).read_text()
        if _usable(token):
            return token
    except FileNotFoundError:
        # jlservice 0.1 kept it in state.json alone (beside its cookie secret). Without the
        # cookie secret, the secrets were removed on purpose: the old token must not return.
        had_secrets = (state_dir / COOKIE_SECRET_FILE).exists()
        token = _published_token(state_dir) if had_secrets else None
    except (OSError, UnicodeDecodeError):
        token = None
    if not _usable(token):
        token = new_token()
    write_token(state_dir, token)
    return token


def _published_token(state_dir: Path) -> str | None:
    try:
        return read_state(state_dir).token
    except StateError:
        return None


def _usable(token: object) -> bool:
    return isinstance(token, str) and len(token) >= 48 and token.isalnum()


def write_token(state_dir: Path, token: str) -> None:
    files.write_atomic(state_dir / TOKEN_FILE, token.encode())


def load_or_create_cookie_secret(state_dir: Path) -> bytes:
    path = state_dir / COOKIE_SECRET_FILE
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    secret = new_cookie_secret()
    files.write_atomic(path, secret)
    return secret


def save_secrets(state_dir: Path, token: str, cookie_secret: bytes) -> None:
    """Replace both secrets; if that fails, remove the old ones (that needs no space), so
    that a rotated token cannot come back with the next start."""
    try:
        write_token(state_dir, token)
        write_cookie_secret(state_dir, cookie_secret)
    except OSError:
        for name in (TOKEN_FILE, COOKIE_SECRET_FILE):
            with contextlib.suppress(OSError):
                (state_dir / name).unlink()
        raise


def write_cookie_secret(state_dir: Path, secret: bytes) -> None:
    files.write_atomic(state_dir / COOKIE_SECRET_FILE, secret)
