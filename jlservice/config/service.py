"""Where the configuration and the state live: the config file's location and [service].

Light on purpose (no dataclasses, no jlservice.users): `jlservice token` and `status` import
only this, to find state.json fast, even while the rest of the file is invalid.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jlservice.config.reader import Reader, read_toml

DEFAULT_PATH = Path("/etc/jlservice/jlservice.toml")


class ServiceConfig(NamedTuple):
    state_dir: Path
    runtime_dir: Path


def locate(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: --config, else $JLSERVICE_CONFIG, else (not root) the user's own
    file, else the system default; None when none of them exists."""
    if cli_path:  # absolute: /etc/jlservice/NAME.toml means instance NAME however it is typed
        return Path(cli_path).absolute()
    if environ.get("JLSERVICE_CONFIG"):
        return Path(environ["JLSERVICE_CONFIG"]).absolute()
    if os.geteuid() != 0:
        own = user_config_path(environ)
        if own.exists():
            return own
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def user_config_path(environ: Mapping[str, str]) -> Path:
    """$XDG_CONFIG_HOME/jlservice/jlservice.toml: what the user unit runs with (%E)."""
    xdg = environ.get("XDG_CONFIG_HOME") or os.path.join(_home(environ), ".config")
    return Path(xdg, "jlservice", "jlservice.toml")


def instance_of(path: Path | None) -> str | None:
    """`alice` for /etc/jlservice/alice.toml, the file of the template unit's jlservice@alice."""
    if path is None or path.parent != DEFAULT_PATH.parent or path.suffix != ".toml":
        return None
    return None if path == DEFAULT_PATH else path.stem


def _home(environ: Mapping[str, str]) -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:  # a uid with no passwd entry
        return environ.get("HOME") or "/"


def load_service(path: Path | None, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Only the [service] section of `path` (None: the built-in defaults)."""
    environ = os.environ if environ is None else environ
    doc = read_toml(str(path)) if path is not None else {}
    reader = Reader(str(path) if path else "built-in defaults")
    return parse_service(reader, reader.table(doc, "service"), environ, path)


def parse_service(
    r: Reader, t: Mapping[str, Any], environ: Mapping[str, str], path: Path | None
) -> ServiceConfig:
    """Defaults follow systemd: $STATE_DIRECTORY / $RUNTIME_DIRECTORY under a unit, else the
    directories the units would give (jlservice/<instance> for /etc/jlservice/<instance>.toml),
    so `jlservice token` run by hand finds the state of the service."""
    r.only(t, "service", {"state_dir", "runtime_dir"})
    is_root = os.geteuid() == 0
    instance = [name] if (name := instance_of(path)) else []
    if environ.get("STATE_DIRECTORY"):
        state_default = environ["STATE_DIRECTORY"].split(":")[0]
    elif is_root:
        state_default = os.path.join("/var/lib/jlservice", *instance)
    else:
        xdg = environ.get("XDG_STATE_HOME") or os.path.join(_home(environ), ".local", "state")
        state_default = os.path.join(xdg, "jlservice")
    state_dir = Path(r.get(t, "service", "state_dir", str, state_default))
    if environ.get("RUNTIME_DIRECTORY"):
        runtime_default = environ["RUNTIME_DIRECTORY"].split(":")[0]
    elif is_root:  # the template's RuntimeDirectory=jlservice-%i
        runtime_default = "/run/" + "-".join(["jlservice", *instance])
    elif environ.get("XDG_RUNTIME_DIR"):
        runtime_default = os.path.join(environ["XDG_RUNTIME_DIR"], "jlservice")
    else:
        runtime_default = str(state_dir / "run")
    runtime_dir = Path(r.get(t, "service", "runtime_dir", str, runtime_default))
    for key, value in (("state_dir", state_dir), ("runtime_dir", runtime_dir)):
        if not value.is_absolute():
            r.fail("service", key, f"{str(value)!r} must be an absolute path")
        if value.exists() and not value.is_dir():
            r.fail("service", key, f"{value} exists and is not a directory")
    return ServiceConfig(state_dir=state_dir, runtime_dir=runtime_dir)
