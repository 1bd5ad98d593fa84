"""The [lab] section: who runs JupyterLab, where, on which address, with what."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jlservice import disk, users
from jlservice.config.model import LabConfig, OptionValue
from jlservice.config.reader import Reader, kind_of
from jlservice.errors import NotAnswering

# Traits that jlservice sets itself, or that decide where JupyterLab listens and who may
# log in, read from jupyter_server 2's ServerApp, IdentityProvider and
# PasswordIdentityProvider. Each maps to what to use instead.
#
# They are refused by trait NAME, on ANY class: traitlets applies a "Class.trait" setting
# to Class and to every subclass of it, so "Application.token", "LoggingConfigurable.token"
# and "Configurable.ip" reach ServerApp and IdentityProvider as surely as "ServerApp.token"
# does (and notebook_shim copies "NotebookApp.*" onto ServerApp). A reserved name is thus
# refused on unrelated classes too ("KernelManager.ip"): being sure is worth that.
_WHERE = "[lab] ip and port (jlservice probes and publishes that address)"
_LOGIN = "[auth] (`jlservice password`, `jlservice token`): it decides who may log in"
_COOKIE = "nothing: jlservice keeps the login cookie's secret, name and flags"
_TLS = "[tls] certfile and keyfile (`jlservice cert`)"
_KERNELS = "[kernels] survive_restarts (jlservice keeps the kernels across restarts)"
_PROXY = "[lab] public_url: behind a proxy JupyterLab then accepts its host name"
RESERVED_TRAITS = {
    # Where JupyterLab listens and what it serves.
    "ip": "[lab] ip",
    "port": "[lab] port",
    "port_retries": "nothing: jlservice pins it to 0 so JupyterLab never moves port",
    "sock": _WHERE,
    "sock_mode": _WHERE,
    "base_url": "[lab] base_url",
    "root_dir": "[lab] notebook_dir",
    "notebook_dir": "[lab] notebook_dir",
    "preferred_dir": "[lab] notebook_dir",
    "open_browser": "nothing: a service never opens a browser",
    "allow_root": "[lab] allow_root",
    "runtime_dir": "nothing: jlservice gives JupyterLab a private runtime dir",
    "config_file": "nothing: it would hide the config jlservice gives JupyterLab (the password)",
    # Who may log in: a token or password of jlservice's, checked by JupyterLab's own classes.
    "token": "`jlservice token --rotate`",
    "password": "[auth] password_file (`jlservice password`)",
    "hashed_password": "[auth] password_file (`jlservice password`)",
    "allow_password_change": "`jlservice password`",
    "identity_provider_class": _LOGIN,
    "authorizer_class": _LOGIN,
    "login_handler_class": _LOGIN,
    "logout_handler_class": _LOGIN,
    "allow_unauthenticated_access": _LOGIN,
    "authenticate_prometheus": _LOGIN,
    "disable_check_xsrf": _LOGIN,
    # The Host check that keeps other web sites out by DNS rebinding.
    "allow_remote_access": _PROXY,
    "local_hostnames": _PROXY,
    # The login cookie.
    "cookie_secret": "`jlservice token --rotate`",
    "cookie_secret_file": "nothing: jlservice keeps the cookie secret in its state dir",
    "cookie_name": "nothing: jlservice fixes it so logins survive port changes",
    "cookie_options": _COOKIE,
    "secure_cookie": _COOKIE,
    # TLS.
    "certfile": _TLS,
    "keyfile": _TLS,
    "ssl_options": _TLS,
    # Kernels that survive JupyterLab ([kernels] survive_restarts): its kernel manager and
    # session database, and the File → Shut Down entry (jlservice brings JupyterLab back).
    "handover_file": _KERNELS,
    "kernel_output": _KERNELS,
    "kernel_oom_score_adj": _KERNELS,
    "limits_socket": _KERNELS,
    "quit_button": "nothing: under jlservice JupyterLab is stopped with `systemctl stop`",
    # Tornado's settings override all of the above (xsrf_cookies, cookie_secret, login_url…).
    "tornado_settings": "nothing: it can override JupyterLab's login settings; put other "
    "tornado settings in the lab user's jupyter_server_config.json",
}
# The command-line aliases and flags of jupyter-lab and jupyter-server that set one.
# Set by jlservice only while [kernels] survive_restarts is on: its kernel manager, and
# sessions kept where the next JupyterLab finds them. Otherwise they are the user's.
KEEPING_TRAITS = {"kernel_manager_class": _KERNELS, "database_filepath": _KERNELS}

_RESERVED_ALIASES = {
    "ip": "ip",
    "port": "port",
    "port-retries": "port_retries",
    "sock": "sock",
    "sock-mode": "sock_mode",
    "notebook-dir": "root_dir",
    "preferred-dir": "preferred_dir",
    "allow-root": "allow_root",
    "config": "config_file",
    "certfile": "certfile",
    "keyfile": "keyfile",
}


def reserved_option(key: str) -> str | None:
    """What to use instead of the traitlet `key` ("Class.trait"), if jlservice manages it."""
    return RESERVED_TRAITS.get(key.rpartition(".")[2])


def refuse_keeping_traits(r: Reader, lab: LabConfig) -> None:
    """[kernels] survive_restarts: JupyterLab's kernel manager and sessions are jlservice's."""
    for key in lab.options:
        trait = key.rpartition(".")[2]
        if trait in KEEPING_TRAITS:
            r.fail(
                "lab",
                f'options."{key}"',
                "is managed by jlservice while [kernels] survive_restarts = true; "
                "set that to false to use your own",
            )
    for arg in lab.command[1:]:
        for word in arg.split():
            if (trait := reserved_argument(word, KEEPING_TRAITS)) is not None:
                r.fail(
                    "lab",
                    "command",
                    f"{word.partition('=')[0]!r} sets {trait}, which is managed by jlservice "
                    "while [kernels] survive_restarts = true; set that to false to use your own",
                )


def reserved_argument(word: str, traits: Mapping[str, str] = RESERVED_TRAITS) -> str | None:
    """The managed trait (of `traits`) that `word`, on JupyterLab's command line, would set.

    traitlets takes "--Class.trait=value" with one dash or two, and argparse any
    unambiguous prefix of a long alias or flag ("--allow-r" is "--allow-root").
    """
    name = word.lstrip("-").partition("=")[0]
    dashes = len(word) - len(word.lstrip("-"))
    if dashes not in (1, 2) or not name:
        return None
    if "." in name:
        trait = name.rpartition(".")[2].replace("-", "_")
        return trait if trait in traits else None
    if traits is not RESERVED_TRAITS:  # its aliases are RESERVED_TRAITS'
        return None
    name = name.replace("_", "-")
    if dashes == 1:
        return _RESERVED_ALIASES.get(name)
    return next((t for alias, t in _RESERVED_ALIASES.items() if alias.startswith(name)), None)


# JUPYTER_NO_CONFIG would hide the config jlservice gives JupyterLab: its password, its extensions.
RESERVED_ENV = {"JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_RUNTIME_DIR", "JUPYTER_NO_CONFIG"}
_OPTION_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", re.ASCII)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_lab(r: Reader, t: Mapping[str, Any], running_as: users.Account, cwd: Path) -> LabConfig:
    s = "lab"
    r.only(
        t,
        s,
        {
            "user",
            "notebook_dir",
            "ip",
            "port",
            "base_url",
            "command",
            "env",
            "options",
            "allow_root",
            "umask",
            "public_url",
        },
    )
    name = r.get(t, s, "user", str, running_as.name)
    account = users.lookup(name)
    if account is None:
        r.fail(s, "user", f"no such user {name!r} (create it with useradd, or fix the name)")
    if not running_as.is_root and account.uid != running_as.uid:
        r.fail(
            s,
            "user",
            f"jlservice runs as {running_as.name}, not root, so it cannot start "
            f"JupyterLab as {name}: run jlservice as root, or remove this key",
        )
    allow_root = r.get(t, s, "allow_root", bool, False)
    if account.is_root and not allow_root:
        r.fail(
            s,
            "user",
            "JupyterLab would run as root: set user to an unprivileged account "
            "(as root, jlservice switches to it), or set allow_root = true",
        )

    default_dir = account.home if running_as.is_root and not account.is_root else str(cwd)
    notebook_dir = _notebook_dir(r, r.get(t, s, "notebook_dir", str, default_dir), account)

    ip = r.get(t, s, "ip", str, "127.0.0.1")
    try:
        ip = str(ipaddress.ip_address(ip.strip("[]")))
    except ValueError:
        r.fail(s, "ip", f"{ip!r} is not an IP address (e.g. 127.0.0.1, ::1, or 0.0.0.0 for all)")
    port = r.get(t, s, "port", int, 8888)
    if not 1 <= port <= 65535:
        r.fail(s, "port", f"{port} is not a port (1–65535)")
    base_url = r.get(t, s, "base_url", str, "/")
    if not (base_url.isascii() and base_url.isprintable()) or any(c in base_url for c in "?#% "):
        r.fail(s, "base_url", f"{base_url!r} must be a plain ASCII URL path such as /jupyter/")
    base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"

    command = _command(r, t, account)
    env = r.get(t, s, "env", dict, {})
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key):
            r.fail(s, f"env.{key}", "not a valid environment variable name")
        if key in RESERVED_ENV:
            r.fail(s, f"env.{key}", "is jlservice's (token, runtime dir, config); remove it")
        if not isinstance(value, str):
            r.fail(s, f"env.{key}", f"expected a string, got {kind_of(value)}")
    options = {
        key: _option(r, key, value) for key, value in r.get(t, s, "options", dict, {}).items()
    }
    umask_text = r.get(t, s, "umask", str, "0077")
    try:
        umask = int(umask_text, 8)
    except ValueError:
        umask = -1
    if not 0 <= umask <= 0o777:
        r.fail(s, "umask", f'{umask_text!r} is not an octal umask such as "0077" or "0022"')
    public_url = _public_url(r, r.get(t, s, "public_url", str, None), base_url)
    return LabConfig(
        user=name,
        notebook_dir=notebook_dir,
        ip=ip,
        port=port,
        base_url=base_url,
        command=command,
        env=dict(env),
        options=options,
        allow_root=allow_root,
        umask=umask,
        public_url=public_url,
    )


def _public_url(r: Reader, text: str | None, base_url: str) -> str | None:
    """The URL people type (behind a proxy), ending in base_url: the proxy passes paths on
    unchanged, since JupyterLab writes base_url into every link it serves."""
    if text is None:
        return None
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        r.fail("lab", "public_url", f"{text!r} must be an http(s) URL such as https://example.org/")
    path = url.path if url.path.endswith("/") else url.path + "/"
    if path == "/":
        path = base_url
    if path != base_url:
        r.fail(
            "lab",
            "public_url",
            f"its path {path} must be base_url {base_url} (the proxy must not rewrite paths)",
        )
    return f"{url.scheme}://{url.netloc}{path}"


def _notebook_dir(r: Reader, text: str, account: users.Account) -> Path:
    if text == "~" or text.startswith("~/"):
        text = account.home + text[1:]
    path = Path(text)
    if not path.is_absolute():
        r.fail("lab", "notebook_dir", f"{text!r} must be an absolute path (or start with ~/)")
    try:
        st = disk.stat(path, disk.ANSWER_WITHIN_S)
    except NotAnswering:
        return path  # cannot be checked now: starts wait for it to answer
    except FileNotFoundError:
        r.fail("lab", "notebook_dir", f"{path} does not exist (create it, owned by {account.name})")
    except OSError as exc:
        r.fail("lab", "notebook_dir", f"cannot look at {path}: {exc.strerror}")
    if not stat.S_ISDIR(st.st_mode):
        r.fail("lab", "notebook_dir", f"{path} is not a directory")
    return path


def default_command() -> tuple[str, ...]:
    """The jupyter-lab next to the Python running jlservice (its own environment)."""
    return (str(Path(sys.executable).parent / "jupyter-lab"),)


_MISSING = "missing"


def _cannot_execute(program: str, account: users.Account) -> str | None:
    if not os.path.exists(program):
        return _MISSING
    return users.execute_denied(program, account)


def _command(r: Reader, t: Mapping[str, Any], account: users.Account) -> tuple[str, ...]:
    argv = r.get(t, "lab", "command", list, None)
    if argv is None:
        argv = list(default_command())
    elif not argv or not all(isinstance(a, str) and a for a in argv):
        r.fail(
            "lab",
            "command",
            'expected a non-empty list of non-empty strings, e.g. ["/opt/conda/bin/jupyter-lab"]',
        )
    program = argv[0]
    if "/" not in program:
        found = shutil.which(program)
        if found is None:
            r.fail("lab", "command", f"{program!r} is not on PATH; give an absolute path")
        program = found
    program = os.path.abspath(program)
    try:  # a venv on a network filesystem whose server is gone must not hang the loop
        why = disk.call(program, lambda: _cannot_execute(program, account), disk.ANSWER_WITHIN_S)
    except NotAnswering:
        why = None  # cannot be checked now: the start says what is wrong, if anything
    if why is _MISSING:
        r.fail(
            "lab",
            "command",
            f"{program} does not exist: install jupyterlab there "
            "(pip install jupyterlab) or point command at its jupyter-lab",
        )
    if why:
        r.fail(
            "lab",
            "command",
            f"user {account.name} cannot execute {program}: {why}; install "
            "JupyterLab where that user can read it (e.g. a venv under /opt)",
        )
    _refuse_managed_arguments(r, argv[1:])
    return (program, *argv[1:])


def _refuse_managed_arguments(r: Reader, args: list[str]) -> None:
    """JupyterLab reads its settings from the command's arguments too: the ones jlservice
    manages are refused there as in [lab] options. Each word of an argument counts, for the
    string of an `sh -c` wrapper; what a wrapper script adds itself cannot be seen here."""
    for arg in args:
        for word in arg.split():
            trait = reserved_argument(word)
            if trait:
                shown = word.partition("=")[0] + ("=…" if "=" in word else "")
                r.fail(
                    "lab",
                    "command",
                    f"{shown!r} sets {trait}, which is managed by jlservice; "
                    f"use {RESERVED_TRAITS[trait]}",
                )


def _option(r: Reader, key: str, value: Any) -> OptionValue:
    where = f'options."{key}"'
    if not _OPTION_KEY.fullmatch(key):
        r.fail("lab", where, 'expected a traitlet name such as "ServerApp.allow_origin"')
    instead = reserved_option(key)
    if instead:
        r.fail("lab", where, f"is managed by jlservice; use {instead}")
    if isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float | bool) for v in value):
        return tuple(value)
    if isinstance(value, dict) and all(
        isinstance(v, str | int | float | bool) for v in value.values()
    ):
        return tuple(value.items())
    r.fail(
        "lab",
        where,
        "expected a string, number, boolean, list of those or a table of those "
        "(deeper nesting cannot pass JupyterLab's command line; put it in the "
        "user's jupyter_server_config.json)",
    )
    raise AssertionError  # unreachable: fail() raises
