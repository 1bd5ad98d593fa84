"""The shipped systemd units as `jlservice install` writes them, and `systemd-analyze
security`'s verdict on them (tests/systemd/test_unit_files.py, bench/systemd.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from jlservice.admin import unit_files

# (file in jlservice/units, name to verify it under, systemd-analyze scope)
UNITS = [
    ("jlservice.service", "jlservice.service", "--system"),
    ("jlservice@.service", "jlservice@alice.service", "--system"),
    ("user/jlservice.service", "jlservice.service", "--user"),
]


def render(
    directory: Path, jlservice: str, source: str, name: str, scope: str
) -> tuple[Path, dict[str, str]]:
    """Unit `source` rendered for the program `jlservice`, as `name` in a directory of its
    scope under `directory`: its path, and the environment to run systemd-analyze in."""
    text = unit_files.template(source)
    where = directory / scope.strip("-")
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_text(unit_files.render_unit(text, [jlservice]))
    runtime = directory / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return where / name, {"XDG_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"}


def exposure(path: Path, env: dict[str, str], scope: str = "--system") -> tuple[float | None, str]:
    """The overall exposure `systemd-analyze security --offline=true` gives the unit at
    `path` (None when it gives none), and its report."""
    report = subprocess.run(
        ["systemd-analyze", scope, "security", "--offline=true", "--no-pager", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", report)
    return (None if found is None else float(found.group(1))), report
