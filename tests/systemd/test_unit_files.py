"""The shipped units, as `jlservice install` writes them: valid, and as hardened as promised."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest
from helpers.units import UNITS, exposure, render
from sandbox import JLSERVICE, available

from jlservice.admin import unit_files


@pytest.fixture
def rendered(tmp_path: Path):
    if why := available():
        pytest.skip(why)
    return functools.partial(render, tmp_path, JLSERVICE)


@pytest.mark.parametrize(("source", "name", "scope"), UNITS)
def test_unit_passes_systemd_analyze_verify(rendered, source, name, scope) -> None:
    path, env = rendered(source, name, scope)
    result = subprocess.run(
        ["systemd-analyze", scope, "verify", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.parametrize(("source", "name", "scope"), UNITS[:2])
def test_system_units_exposure_is_below_5(rendered, source, name, scope) -> None:
    path, env = rendered(source, name, scope)
    score, report = exposure(path, env)
    assert score is not None and score < 5.0, report


@pytest.mark.parametrize("source", [u[0] for u in UNITS])
def test_no_hardening_that_breaks_gpus_jits_or_home_notebooks(source) -> None:
    text = unit_files.template(source)
    settings = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in text.splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert settings.get("PrivateDevices", "no") == "no", "hides /dev/nvidia*"
    assert settings.get("MemoryDenyWriteExecute", "no") == "no", "breaks numba, cffi callbacks"
    assert settings.get("ProtectHome", "no") == "no", "hides notebooks under /home"
    assert settings["Type"] == "notify"
    assert settings["RestartPreventExitStatus"] == "78"
    assert settings["OOMPolicy"] == "continue"
    assert settings["KillMode"] == "mixed"
