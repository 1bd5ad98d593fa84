"""The shipped units, as `jlservice install` writes them: valid, and as hardened as promised."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from sandbox import JLSERVICE, available

from jlservice.admin import unit_files

# (file in jlservice/units, name to verify it under, systemd-analyze scope)
UNITS = [
    ("jlservice.service", "jlservice.service", "--system"),
    ("jlservice@.service", "jlservice@alice.service", "--system"),
    ("user/jlservice.service", "jlservice.service", "--user"),
]


@pytest.fixture
def rendered(tmp_path: Path):
    if why := available():
        pytest.skip(why)

    def render(source: str, name: str, scope: str) -> tuple[Path, dict[str, str]]:
        text = unit_files.template(source)
        where = tmp_path / scope.strip("-")
        where.mkdir(exist_ok=True)
        (where / name).write_text(unit_files.render_unit(text, [JLSERVICE]))
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        return where / name, {"XDG_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"}

    return render


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
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    assert exposure < 5.0, out


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
