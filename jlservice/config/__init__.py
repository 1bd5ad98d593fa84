"""Read jlservice.toml, validate it strictly, and produce a frozen Config.

Every problem becomes one ConfigError line naming the file, the key and what to do.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jlservice import users
from jlservice.config.lab import RESERVED_ENV, RESERVED_OPTIONS, default_command, parse_lab
from jlservice.config.model import (
    Config,
    ConfigError,
    HealthConfig,
    LabConfig,
    LogConfig,
    OptionValue,
    ReloadConfig,
    RestartConfig,
    ServiceConfig,
)
from jlservice.config.reader import Reader
from jlservice.config.render import render
from jlservice.config.sections import (
    parse_health,
    parse_log,
    parse_reload,
    parse_restart,
    parse_service,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DEFAULT_PATH",
    "RESERVED_ENV",
    "RESERVED_OPTIONS",
    "Config",
    "ConfigError",
    "HealthConfig",
    "LabConfig",
    "LogConfig",
    "OptionValue",
    "ReloadConfig",
    "RestartConfig",
    "ServiceConfig",
    "default_command",
    "load",
    "load_service",
    "locate",
    "parse",
    "render",
]

DEFAULT_PATH = Path("/etc/jlservice/jlservice.toml")


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
    reader = Reader(str(path) if path else "built-in defaults")
    return parse_service(reader, reader.table(doc, "service"), users.current(), environ)


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
    reader = Reader(source)
    reader.only(doc, "", {"lab", "service", "restart", "health", "reload", "log"})
    running_as = users.current()
    lab = parse_lab(reader, reader.table(doc, "lab"), running_as, cwd)
    return Config(
        path=path,
        lab=lab,
        service=parse_service(reader, reader.table(doc, "service"), running_as, environ),
        restart=parse_restart(reader, reader.table(doc, "restart")),
        health=parse_health(reader, reader.table(doc, "health")),
        reload=parse_reload(reader, reader.table(doc, "reload")),
        log=parse_log(reader, reader.table(doc, "log")),
    )
