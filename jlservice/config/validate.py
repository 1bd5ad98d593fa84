"""Read the whole configuration file and validate every section into a Config."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jlservice import users
from jlservice.config.access import parse_auth, parse_tls, refuse_open_access
from jlservice.config.environments import refuse_own_kernelspecs
from jlservice.config.lab import parse_lab, refuse_keeping_traits
from jlservice.config.metrics import parse_metrics
from jlservice.config.model import Config
from jlservice.config.reader import Reader, digest, parse_toml, read_bytes
from jlservice.config.sections import (
    parse_health,
    parse_kernels,
    parse_log,
    parse_reload,
    parse_restart,
)
from jlservice.config.service import parse_service

SECTIONS = {
    "lab",
    "auth",
    "tls",
    "service",
    "restart",
    "kernels",
    "health",
    "reload",
    "log",
    "metrics",
}


def load(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Config:
    """Read and validate `path` (None: built-in defaults)."""
    environ = os.environ if environ is None else environ
    if path is None:
        return parse({}, "built-in defaults", None, environ, cwd or Path.cwd())
    raw = read_bytes(str(path))
    config = parse(parse_toml(raw, str(path)), str(path), path, environ, cwd or Path.cwd())
    return dataclasses.replace(config, digest=digest(raw))


def parse_text(text: str, path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Validate `text` as if it were the content of `path`."""
    raw = text.encode()
    environ = os.environ if environ is None else environ
    config = parse(parse_toml(raw, str(path)), str(path), path, environ, Path.cwd())
    return dataclasses.replace(config, digest=digest(raw))


def parse(
    doc: Mapping[str, Any],
    source: str,
    path: Path | None,
    environ: Mapping[str, str],
    cwd: Path,
) -> Config:
    reader = Reader(source)
    reader.only(doc, "", SECTIONS)
    lab = parse_lab(reader, reader.table(doc, "lab"), users.current(), cwd)
    base = path.parent if path is not None else cwd
    auth = parse_auth(reader, reader.table(doc, "auth"), base)
    refuse_open_access(reader, lab, auth)
    home = users.lookup(lab.user).home  # parse_lab checked that the user exists
    kernels = parse_kernels(reader, reader.table(doc, "kernels"), home)
    if kernels.survive_restarts:
        refuse_keeping_traits(reader, lab)
    if kernels.environments:
        refuse_own_kernelspecs(reader, lab)
    return Config(
        path=path,
        lab=lab,
        service=parse_service(reader, reader.table(doc, "service"), environ, path),
        auth=auth,
        tls=parse_tls(reader, reader.table(doc, "tls"), base),
        restart=parse_restart(reader, reader.table(doc, "restart")),
        kernels=kernels,
        health=parse_health(reader, reader.table(doc, "health")),
        reload=parse_reload(reader, reader.table(doc, "reload")),
        log=parse_log(reader, reader.table(doc, "log")),
        metrics=parse_metrics(reader, reader.table(doc, "metrics"), lab, base),
    )
