"""jlservice.toml: locate it, read it, validate it strictly into a frozen Config.

Every problem becomes one ConfigError line naming the file, the key and what to do.

Only the light part (locating the file, [service], ConfigError) is imported eagerly: the
rest loads on first use (PEP 562 module __getattr__), so that `jlservice token` does not
pay for dataclasses and the [lab] validation.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from jlservice.config.reader import ConfigError
from jlservice.config.service import DEFAULT_PATH, ServiceConfig, load_service, locate

_LAZY = {
    "load": "validate",
    "parse": "validate",
    "parse_text": "validate",
    "render": "effective",
    "Config": "model",
    "LabConfig": "model",
    "RestartConfig": "model",
    "KernelsConfig": "model",
    "HealthConfig": "model",
    "ReloadConfig": "model",
    "LogConfig": "model",
    "MetricsConfig": "model",
    "AuthConfig": "model",
    "TLSConfig": "model",
    "OptionValue": "model",
    "RESERVED_TRAITS": "lab",
    "RESERVED_ENV": "lab",
    "default_command": "lab",
}

__all__ = ["DEFAULT_PATH", "ConfigError", "ServiceConfig", "load_service", "locate", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
