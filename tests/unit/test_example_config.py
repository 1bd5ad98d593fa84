"""etc/jlservice.toml documents every key jlservice accepts, with its real default."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from jlservice import config

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "jlservice.toml"
SECTIONS = {
    "lab": config.LabConfig,
    "auth": config.AuthConfig,
    "tls": config.TLSConfig,
    "service": config.ServiceConfig,
    "restart": config.RestartConfig,
    "kernels": config.KernelsConfig,
    "health": config.HealthConfig,
    "reload": config.ReloadConfig,
    "log": config.LogConfig,
    "metrics": config.MetricsConfig,
}


def _documented() -> dict[str, dict[str, str]]:
    """{section: {key: commented default}} from the example's `#key = value` lines."""
    found: dict[str, dict[str, str]] = {}
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if m := re.match(r"^\[([a-z.]+)\]", line):
            section = m[1]
        elif m := re.match(r"^#([a-z_]+) = (.+)$", line):
            found.setdefault(section, {})[m[1]] = m[2]
    return found


def test_every_key_is_documented():
    documented = _documented()
    for section, cls in SECTIONS.items():
        fields = (
            cls._fields if hasattr(cls, "_fields") else [f.name for f in dataclasses.fields(cls)]
        )
        # Tables of their own, and what jlservice reads from the files the keys name.
        read = {"password_hash", "cert_pem", "key_pem", "bearer_token"}
        keys = set(fields) - {"env", "options"} - read
        assert keys <= set(documented.get(section, {})), (section, keys)
    text = EXAMPLE.read_text()
    assert "\n[lab.env]\n" in text and "\n[lab.options]\n" in text


def test_documented_defaults_are_the_real_ones():
    documented = _documented()
    for section in ("restart", "health", "reload", "log", "metrics"):
        defaults = SECTIONS[section]()
        for key, text in documented[section].items():
            if getattr(defaults, key) is None:  # an optional file: the example names one
                continue
            assert tomllib.loads(f"v = {text}")["v"] == getattr(defaults, key), (section, key)


def test_example_is_valid_toml_with_only_known_sections():
    doc = tomllib.loads(EXAMPLE.read_text())
    assert set(doc) <= set(SECTIONS)
