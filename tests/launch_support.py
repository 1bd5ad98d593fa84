"""A JupyterLab launch from a minimal configuration, for the unit tests."""

from __future__ import annotations

import os
from pathlib import Path

from jlservice import config
from jlservice.start import launcher

IS_ROOT = os.geteuid() == 0


def make_config(tmp_path: Path, **lab: object) -> config.Config:
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir(exist_ok=True)
    table: dict[str, object] = {"notebook_dir": str(notebooks), "port": 9123}
    if IS_ROOT:
        table["allow_root"] = True
    table.update(lab)
    doc = {
        "lab": table,
        "service": {"state_dir": str(tmp_path / "state"), "runtime_dir": str(tmp_path / "run")},
    }
    return config.parse(doc, "test.toml", None, {}, tmp_path)


def build(tmp_path: Path, environ: dict[str, str] | None = None, **lab) -> launcher.Launch:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"} if environ is None else environ
    return launcher.build(make_config(tmp_path, **lab), environ=env)
