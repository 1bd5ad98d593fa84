"""Read jlservice.toml, validate it strictly, and produce a frozen Config.

Every problem becomes one ConfigError line naming the file, the key and what to do.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jlservice import users

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/jlservice/jlservice.toml")

Scalar = str | int | float | bool
OptionValue = Scalar | tuple[Scalar, ...] | tuple[tuple[str, Scalar], ...]

# Traitlets that jlservice sets itself; letting [lab] options override them would break
# readiness checks, the token, or the login cookie.
RESERVED_OPTIONS = {
    "ServerApp.ip": "[lab] ip",
    "ServerApp.port": "[lab] port",
    "ServerApp.port_retries": "nothing: jlservice pins it to 0 so JupyterLab never moves port",
    "ServerApp.base_url": "[lab] base_url",
    "ServerApp.root_dir": "[lab] notebook_dir",
    "ServerApp.notebook_dir": "[lab] notebook_dir",
    "ServerApp.preferred_dir": "[lab] notebook_dir",
    "ServerApp.open_browser": "nothing: a service never opens a browser",
    "ServerApp.allow_root": "[lab] allow_root",
    "ServerApp.token": "`jlservice token --rotate`",
    "IdentityProvider.token": "`jlservice token --rotate`",
    "ServerApp.cookie_secret": "`jlservice token --rotate`",
    "ServerApp.cookie_secret_file": "nothing: jlservice keeps the cookie secret in its state dir",
    "IdentityProvider.cookie_name": "nothing: jlservice fixes it so logins survive port changes",
    "ServerApp.runtime_dir": "nothing: jlservice gives JupyterLab a private runtime dir",
}
RESERVED_ENV = {"JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE", "JUPYTER_RUNTIME_DIR"}
_OPTION_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")


class ConfigError(Exception):
    """A configuration problem; str() is the one line to show the user."""


@dataclass(frozen=True)
class LabConfig:
    user: str
    notebook_dir: Path
    ip: str
    port: int
    base_url: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    options: Mapping[str, OptionValue]
    allow_root: bool
    umask: int


@dataclass(frozen=True)
class ServiceConfig:
    state_dir: Path
    runtime_dir: Path


@dataclass(frozen=True)
class RestartConfig:
    initial_delay: float = 0.5
    max_delay: float = 30.0
    reset_after: float = 60.0
    max_failures: int = 5
    start_timeout: float = 120.0
    stop_timeout: float = 20.0


@dataclass(frozen=True)
class HealthConfig:
    interval: float = 10.0
    timeout: float = 5.0
    failures: int = 3


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "console"


@dataclass(frozen=True)
class Config:
    path: Path | None
    lab: LabConfig
    service: ServiceConfig
    restart: RestartConfig = field(default_factory=RestartConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def account(self) -> users.Account:
        account = users.lookup(self.lab.user)
        if account is None:  # the user was deleted after validation
            raise ConfigError(f"[lab] user: no such user {self.lab.user!r}")
        return account


def locate(cli_path: str | None, environ: Mapping[str, str]) -> Path | None:
    """The file to read: --config, else $JLSERVICE_CONFIG, else the system default if present."""
    if cli_path:
        return Path(cli_path)
    if environ.get("JLSERVICE_CONFIG"):
        return Path(environ["JLSERVICE_CONFIG"])
    return DEFAULT_PATH if DEFAULT_PATH.exists() else None


def load_service(path: Path | None, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Only the [service] section: what `jlservice token` and `status` need to find the state.

    Works while the rest of the file is invalid, so the token of a running server can always
    be read.
    """
    environ = os.environ if environ is None else environ
    doc = _read(path) if path is not None else {}
    reader = _Reader(str(path) if path else "built-in defaults")
    return _service(reader, reader.table(doc, "service"), users.current(), environ)


def load(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Read and validate `path` (None: built-in defaults)."""
    environ = os.environ if environ is None else environ
    if path is None:
        return parse({}, "built-in defaults", None, environ, cwd or Path.cwd())
    return parse(_read(path), str(path), path, environ, cwd or Path.cwd())


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create it, or see etc/jlservice.toml)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (run as its owner or root)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def parse(
    doc: Mapping[str, Any],
    source: str,
    path: Path | None,
    environ: Mapping[str, str],
    cwd: Path,
) -> Config:
    reader = _Reader(source)
    reader.only(doc, "", {"lab", "service", "restart", "health", "log"})
    running_as = users.current()
    lab = _lab(reader, reader.table(doc, "lab"), running_as, cwd)
    return Config(
        path=path,
        lab=lab,
        service=_service(reader, reader.table(doc, "service"), running_as, environ),
        restart=_restart(reader, reader.table(doc, "restart")),
        health=_health(reader, reader.table(doc, "health")),
        log=_log(reader, reader.table(doc, "log")),
    )


def _lab(r: _Reader, t: Mapping[str, Any], running_as: users.Account, cwd: Path) -> LabConfig:
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
    if any(c in base_url for c in "?#% \t\r\n"):
        r.fail(s, "base_url", f"{base_url!r} must be a plain URL path such as /jupyter/")
    base_url = "/" + base_url.strip("/") + "/" if base_url.strip("/") else "/"

    command = _command(r, t, account)
    env = r.get(t, s, "env", dict, {})
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            r.fail(s, f"env.{key}", "not a valid environment variable name")
        if key in RESERVED_ENV:
            r.fail(s, f"env.{key}", "is set by jlservice (token and runtime dir); remove it")
        if not isinstance(value, str):
            r.fail(s, f"env.{key}", f"expected a string, got {_kind(value)}")
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
    )


def _notebook_dir(r: _Reader, text: str, account: users.Account) -> Path:
    if text == "~" or text.startswith("~/"):
        text = account.home + text[1:]
    path = Path(text)
    if not path.is_absolute():
        r.fail("lab", "notebook_dir", f"{text!r} must be an absolute path (or start with ~/)")
    if not path.exists():
        r.fail("lab", "notebook_dir", f"{path} does not exist (create it, owned by {account.name})")
    if not path.is_dir():
        r.fail("lab", "notebook_dir", f"{path} is not a directory")
    return path


def default_command() -> tuple[str, ...]:
    """The jupyter-lab next to the Python running jlservice (its own environment)."""
    return (str(Path(sys.executable).parent / "jupyter-lab"),)


def _command(r: _Reader, t: Mapping[str, Any], account: users.Account) -> tuple[str, ...]:
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
    if not os.path.exists(program):
        r.fail(
            "lab",
            "command",
            f"{program} does not exist: install jupyterlab there "
            "(pip install jupyterlab) or point command at its jupyter-lab",
        )
    why = users.execute_denied(program, account)
    if why:
        r.fail(
            "lab",
            "command",
            f"user {account.name} cannot execute {program}: {why}; install "
            "JupyterLab where that user can read it (e.g. a venv under /opt)",
        )
    return (program, *argv[1:])


def _option(r: _Reader, key: str, value: Any) -> OptionValue:
    where = f'options."{key}"'
    if not _OPTION_KEY.match(key):
        r.fail("lab", where, 'expected a traitlet name such as "ServerApp.allow_origin"')
    if key in RESERVED_OPTIONS:
        r.fail("lab", where, f"is managed by jlservice; use {RESERVED_OPTIONS[key]}")
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


def _service(
    r: _Reader, t: Mapping[str, Any], running_as: users.Account, environ: Mapping[str, str]
) -> ServiceConfig:
    r.only(t, "service", {"state_dir", "runtime_dir"})
    if environ.get("STATE_DIRECTORY"):
        state_default = environ["STATE_DIRECTORY"].split(":")[0]
    elif running_as.is_root:
        state_default = "/var/lib/jlservice"
    else:
        xdg = environ.get("XDG_STATE_HOME") or os.path.join(running_as.home, ".local", "state")
        state_default = os.path.join(xdg, "jlservice")
    state_dir = Path(r.get(t, "service", "state_dir", str, state_default))
    if environ.get("RUNTIME_DIRECTORY"):
        runtime_default = environ["RUNTIME_DIRECTORY"].split(":")[0]
    elif running_as.is_root:
        runtime_default = "/run/jlservice"
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


def _restart(r: _Reader, t: Mapping[str, Any]) -> RestartConfig:
    d = RestartConfig()
    r.only(t, "restart", set(d.__dataclass_fields__))
    c = RestartConfig(
        initial_delay=r.seconds(t, "restart", "initial_delay", d.initial_delay, minimum=0),
        max_delay=r.seconds(t, "restart", "max_delay", d.max_delay, minimum=0),
        reset_after=r.seconds(t, "restart", "reset_after", d.reset_after, minimum=0),
        max_failures=r.count(t, "restart", "max_failures", d.max_failures),
        start_timeout=r.seconds(t, "restart", "start_timeout", d.start_timeout, minimum=1),
        stop_timeout=r.seconds(t, "restart", "stop_timeout", d.stop_timeout, minimum=0.1),
    )
    if c.max_delay < c.initial_delay:
        r.fail("restart", "max_delay", f"{c.max_delay} is below initial_delay {c.initial_delay}")
    return c


def _health(r: _Reader, t: Mapping[str, Any]) -> HealthConfig:
    d = HealthConfig()
    r.only(t, "health", set(d.__dataclass_fields__))
    return HealthConfig(
        interval=r.seconds(t, "health", "interval", d.interval, minimum=0.1),
        timeout=r.seconds(t, "health", "timeout", d.timeout, minimum=0.1),
        failures=r.count(t, "health", "failures", d.failures),
    )


def _log(r: _Reader, t: Mapping[str, Any]) -> LogConfig:
    r.only(t, "log", {"level", "format"})
    level = r.get(t, "log", "level", str, "info").lower()
    if level not in LOG_LEVELS:
        r.fail("log", "level", f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    fmt = r.get(t, "log", "format", str, "console")
    if fmt not in LOG_FORMATS:
        r.fail("log", "format", f"{fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    return LogConfig(level=level, format=fmt)


def _kind(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


class _Reader:
    """Typed access to one TOML document; every failure names source, section and key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, section: str, key: str, problem: str) -> None:
        where = f"[{section}] {key}" if section else key
        raise ConfigError(f"{self.source}: {where}: {problem}")

    def only(self, t: Mapping[str, Any], section: str, allowed: set[str]) -> None:
        for key in t:
            if key not in allowed:
                hint = _closest(key, allowed)
                what = "section" if not section else "key"
                self.fail(
                    section,
                    key,
                    f"unknown {what}"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + f"; known: {', '.join(sorted(allowed))}",
                )

    def table(self, doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            self.fail("", name, f"expected a [{name}] table, got {_kind(value)}")
        return value

    def get(self, t: Mapping[str, Any], section: str, key: str, kind: type, default: Any) -> Any:
        if key not in t:
            return default
        value = t[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            self.fail(section, key, f"expected {_kind(kind())}, got {_kind(value)} {_show(value)}")
        return value

    def seconds(
        self, t: Mapping[str, Any], section: str, key: str, default: float, minimum: float
    ) -> float:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(
                section, key, f"expected a number of seconds, got {_kind(value)} {_show(value)}"
            )
        if not minimum <= value <= 86400:
            self.fail(section, key, f"{value} is out of range ({minimum}–86400 seconds)")
        return float(value)

    def count(self, t: Mapping[str, Any], section: str, key: str, default: int) -> int:
        value = self.get(t, section, key, int, default)
        if not 1 <= value <= 1000:
            self.fail(section, key, f"{value} is out of range (1–1000)")
        return value


def _show(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _closest(key: str, allowed: set[str]) -> str | None:
    matches = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return matches[0] if matches else None


def render(config: Config) -> str:
    """The effective configuration as TOML (check-config prints it)."""
    lab = config.lab
    sections: list[tuple[str, dict[str, Any]]] = [
        (
            "lab",
            {
                "user": lab.user,
                "notebook_dir": str(lab.notebook_dir),
                "ip": lab.ip,
                "port": lab.port,
                "base_url": lab.base_url,
                "command": list(lab.command),
                "allow_root": lab.allow_root,
                "umask": f"{lab.umask:04o}",
            },
        ),
        ("lab.env", dict(lab.env)),
        ("lab.options", {k: dict(v) if _is_pairs(v) else v for k, v in lab.options.items()}),
        (
            "service",
            {
                "state_dir": str(config.service.state_dir),
                "runtime_dir": str(config.service.runtime_dir),
            },
        ),
        ("restart", vars(config.restart)),
        ("health", vars(config.health)),
        ("log", vars(config.log)),
    ]
    source = str(config.path) if config.path else "built-in defaults"
    out = [f"# effective configuration from {source}"]
    for name, values in sections:
        out.append(f"\n[{name}]")
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())
    return "\n".join(out) + "\n"


def _is_pairs(value: OptionValue) -> bool:
    return isinstance(value, tuple) and bool(value) and isinstance(value[0], tuple)


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)
