"""A JupyterLab launch from a minimal configuration, for the unit tests."""

from __future__ import annotations

import os
from pathlib import Path

from jlservice import config
from jlservice.start import launcher

IS_ROOT = os.geteuid() == 0


def make_config(
    tmp_path: Path, sections: dict[str, dict[str, object]] | None = None, **lab: object
) -> config.Config:
    """A valid configuration: these [lab] keys and other `sections` over a minimal one."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir(exist_ok=True)
    table: dict[str, object] = {"notebook_dir": str(notebooks), "port": 9123}
    if IS_ROOT:
        table["allow_root"] = True
    table.update(lab)
    doc: dict[str, dict[str, object]] = {
        "lab": table,
        "service": {"state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
    }
    for name, values in (sections or {}).items():
        doc.setdefault(name, {}).update(values)
    return config.parse(doc, "test.toml", None, {}, tmp_path)


def build(tmp_path: Path, environ: dict[str, str] | None = None, **lab) -> launcher.Launch:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"} if environ is None else environ
    return launcher.build(make_config(tmp_path, **lab), environ=env)
