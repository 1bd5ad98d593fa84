"""The effective configuration as TOML, for `jlservice check-config`."""

from __future__ import annotations

import json
import re
from typing import Any

from jlservice.config.model import Config, MetricsConfig, OptionValue


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
                **({"public_url": lab.public_url} if lab.public_url else {}),
            },
        ),
        ("lab.env", dict(lab.env)),
        ("lab.options", {k: dict(v) if _is_pairs(v) else v for k, v in lab.options.items()}),
        ("auth", _paths(token=config.auth.token, password_file=config.auth.password_file)),
        ("tls", _paths(certfile=config.tls.certfile, keyfile=config.tls.keyfile)),
        (
            "service",
            {
                "state_dir": str(config.service.state_dir),
                "runtime_dir": str(config.service.runtime_dir),
            },
        ),
        ("restart", vars(config.restart)),
        ("kernels", {k: v for k, v in vars(config.kernels).items() if v is not None}),
        ("health", vars(config.health)),
        ("reload", vars(config.reload)),
        ("log", vars(config.log)),
        ("metrics", _metrics(config.metrics)),
    ]
    source = str(config.path) if config.path else "built-in defaults"
    out = [f"# effective configuration from {source}"]
    for name, values in sections:
        out.append(f"\n[{name}]")
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items())
    return "\n".join(out) + "\n"


def _paths(**values: Any) -> dict[str, Any]:
    """Keys that are set; never a file's content (the password hash, the key)."""
    return {k: v if isinstance(v, bool) else str(v) for k, v in values.items() if v is not None}


def _metrics(metrics: MetricsConfig) -> dict[str, Any]:
    """The keys as written; never the token itself."""
    values = {k: v for k, v in vars(metrics).items() if not k.startswith("bearer_token")}
    return values | _paths(bearer_token_file=metrics.bearer_token_file)


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
        # JSON escapes are TOML escapes, except that TOML also forbids a raw DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(value)
