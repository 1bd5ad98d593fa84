"""Typed access to a parsed TOML document; every failure names source, section and key."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from jlservice import bounded
from jlservice.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_BYTES = 1 << 20  # the full example configuration is a few kB


def read_toml(path: str) -> dict[str, Any]:
    """Parse the TOML file at `path`; every failure is a ConfigError naming it."""
    return parse_toml(read_bytes(path), path)


def digest(raw: bytes) -> str:
    """The digest of a configuration file's content (the reload watcher compares it)."""
    import hashlib  # not on the `jlservice token` path

    return hashlib.sha256(raw).hexdigest()


def read_bytes(path: str) -> bytes:
    try:
        raw = read_head(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (create it, or see etc/jlservice.toml)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied (run as its owner or root)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(
            f"{path}: larger than {MAX_BYTES >> 20} MiB: not a jlservice configuration file "
            "(check the path)"
        )
    return raw


def read_head(path: str | os.PathLike[str]) -> bytes:
    """The file's first MAX_BYTES + 1 bytes: enough to tell it is too large."""
    with open(path, "rb") as f:
        return f.read(MAX_BYTES + 1)


def parse_toml(raw: bytes, path: str) -> dict[str, Any]:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:  # the parser recurses once per level of arrays and inline tables
        doc = None
    if doc is None or bounded.too_deep(doc):  # dotted keys nest tables without recursing
        raise ConfigError(
            f"{path}: tables and arrays nested deeper than {bounded.MAX_DEPTH} levels "
            "(no setting needs that)"
        )
    return doc


def kind_of(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


class Reader:
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
            self.fail("", name, f"expected a [{name}] table, got {kind_of(value)}")
        return value

    def get(self, t: Mapping[str, Any], section: str, key: str, kind: type, default: Any) -> Any:
        if key not in t:
            return default
        value = t[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            got = f"{kind_of(value)} {_show(value)}"
            self.fail(section, key, f"expected {kind_of(kind())}, got {got}")
        self.no_nul(section, key, value)
        return value

    def no_nul(self, section: str, key: str, value: Any) -> None:
        """Strings reach exec(), paths and the environment, none of which can hold a NUL."""
        if isinstance(value, dict):
            for k, v in value.items():
                self.no_nul(section, f"{key}.{k}", k)
                self.no_nul(section, f"{key}.{k}", v)
        elif isinstance(value, list):
            for item in value:
                self.no_nul(section, key, item)
        elif isinstance(value, str) and "\0" in value:
            self.fail(section, key, "contains a NUL character")

    def seconds(
        self, t: Mapping[str, Any], section: str, key: str, default: float, minimum: float
    ) -> float:
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(
                section, key, f"expected a number of seconds, got {kind_of(value)} {_show(value)}"
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
    import difflib  # only on the error path

    matches = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return matches[0] if matches else None
