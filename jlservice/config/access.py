"""Who may reach JupyterLab and how: [auth], [tls], and the refusal of unsafe combinations.

The password hash, certificate and key are read here, at validation: a missing, unreadable
or malformed file is a configuration error (refused at start and at reload alike), and the
launch that carries their content changes when they do, so a reload restarts JupyterLab.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jlservice import users
from jlservice.config.model import AuthConfig, LabConfig, TLSConfig
from jlservice.config.reader import Reader

# jupyter_server's hashes: "argon2:$argon2id$…", or "sha1:salt:hexdigest" from older versions.
_HASH = re.compile(r"[a-z0-9_]+:\S+", re.ASCII)
MAX_FILE = 1 << 20  # a certificate chain is a few kB


def parse_auth(r: Reader, t: Mapping[str, Any], base: Path) -> AuthConfig:
    r.only(t, "auth", {"token", "password_file"})
    token = r.get(t, "auth", "token", bool, True)
    text = r.get(t, "auth", "password_file", str, None)
    if text is None:
        return AuthConfig(token=token)
    path = _path(text, base)
    raw = _read_private(r, "auth", "password_file", path, "`jlservice password`")
    hashed = raw.decode("utf-8", "replace").strip()
    if not _HASH.fullmatch(hashed):
        r.fail(
            "auth",
            "password_file",
            f"{path} does not hold a password hash; write it with `jlservice password`",
        )
    return AuthConfig(token=token, password_file=path, password_hash=hashed)


def parse_tls(r: Reader, t: Mapping[str, Any], base: Path) -> TLSConfig:
    r.only(t, "tls", {"certfile", "keyfile"})
    certfile = r.get(t, "tls", "certfile", str, None)
    keyfile = r.get(t, "tls", "keyfile", str, None)
    if certfile is None and keyfile is None:
        return TLSConfig()
    if certfile is None or keyfile is None:
        missing = "certfile" if certfile is None else "keyfile"
        r.fail("tls", missing, "missing: give both certfile and keyfile (or neither for http)")
    from jlservice.admin import tls  # cryptography: only when TLS is configured

    cert_path = _path(certfile, base)
    key_path = _path(keyfile, base)
    cert_pem = _read(r, "tls", "certfile", cert_path, "`jlservice cert`")
    key_pem = _read_private(r, "tls", "keyfile", key_path, "`jlservice cert`")
    try:
        tls.inspect(cert_pem)
    except tls.CertError as exc:
        r.fail("tls", "certfile", f"{cert_path}: {exc}")
    problem = tls.check_pair(cert_pem, key_pem)
    if problem:
        r.fail("tls", "keyfile", f"{key_path}: {problem}")
    return TLSConfig(certfile=cert_path, keyfile=key_path, cert_pem=cert_pem, key_pem=key_pem)


def refuse_open_access(r: Reader, lab: LabConfig, auth: AuthConfig) -> None:
    """Listening beyond this machine, or behind a proxy ([lab] public_url), with neither
    token nor password lets anyone who can reach it run code as the lab user."""
    if auth.login_required:
        return
    fix = "set a password (`jlservice password`), or [auth] token = true"
    if not ipaddress.ip_address(lab.ip).is_loopback:
        r.fail(
            "lab",
            "ip",
            f"{lab.ip} with [auth] token = false and no password_file would let anyone who "
            f'reaches port {lab.port} run code as {lab.user}: {fix}, or ip = "127.0.0.1"',
        )
    if lab.public_url:
        r.fail(
            "lab",
            "public_url",
            f"{lab.public_url} with [auth] token = false and no password_file would let "
            f"anyone who reaches the proxy run code as {lab.user}: {fix}",
        )


def open_to_local_users(lab: LabConfig, auth: AuthConfig, lab_uid: int) -> str | None:
    """What to warn about when JupyterLab has no login on loopback but other people have
    accounts here: any of them can reach it and run code as the lab user."""
    if auth.login_required:
        return None
    others = users.people(lab_uid)
    if not others:
        return None
    return (
        f"[auth] token = false and no password_file: every local account "
        f"({few(others)}) can reach JupyterLab on {lab.ip}:{lab.port} and run code as "
        f"{lab.user}; set a password (`jlservice password`), or [auth] token = true"
    )


def few(names: list[str], shown: int = 3) -> str:
    """'a, b, c and 4 more'."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _path(text: str, base: Path) -> Path:
    """Relative paths are relative to the configuration file's directory."""
    return base / text if not Path(text).is_absolute() else Path(text)


def _read(r: Reader, section: str, key: str, path: Path, maker: str) -> bytes:
    """Read a file whose content JupyterLab gets: from a place only root can change, else the
    lab user could point root at a file of its choice; never blocking on a FIFO."""
    swappable = users.others_can_change(path)
    if swappable:
        r.fail(section, key, f"{path}: {swappable}; move it where no other user can change it")
    try:
        raw = users.read_head(path, MAX_FILE)
        if raw is not None:
            return raw
        r.fail(section, key, f"{path} is not a regular file")
    except FileNotFoundError:
        r.fail(section, key, f"{path} does not exist; create it with {maker}")
    except PermissionError:
        r.fail(section, key, f"{path}: permission denied (jlservice runs as uid {os.geteuid()})")
    except OSError as exc:
        r.fail(section, key, f"{path}: cannot read: {exc.strerror}")
    raise AssertionError  # unreachable: fail() raises


def _read_private(r: Reader, section: str, key: str, path: Path, maker: str) -> bytes:
    """Read a secret, refusing one that other users can read."""
    raw = _read(r, section, key, path, maker)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        r.fail(
            section,
            key,
            f"{path} is mode {mode:04o}, readable by others: `chmod 600 {path}`",
        )
    return raw


def risks(options: Mapping[str, Any], user: str) -> list[str]:
    """Warnings (not refusals) about [lab] options that open JupyterLab to other web sites."""
    found = []
    for key, value in options.items():
        trait = key.rpartition(".")[2]
        wildcard = (trait == "allow_origin" and value == "*") or (
            trait == "allow_origin_pat" and isinstance(value, str) and _matches_any_origin(value)
        )
        if wildcard:
            found.append(
                f'[lab] options "{key}" = {value!r} lets any web site a logged-in user '
                f"visits call JupyterLab and open kernel websockets, running code as {user}; "
                "name the origins that need access instead"
            )
    return found


def _matches_any_origin(pattern: str) -> bool:
    try:
        return re.match(pattern, "https://attacker.invalid") is not None
    except re.error:
        return False
