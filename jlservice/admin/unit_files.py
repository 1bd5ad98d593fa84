"""The text `jlservice install` writes: units with ExecStart pointing at this jlservice, the
notebook-dir drop-in, a first configuration file; and whether root may run this jlservice."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

from jlservice import __version__

NOTEBOOK_DROP_IN = "jlservice-notebook-dir.conf"
# What the system units' ReadWritePaths= already open under ProtectSystem=strict.
WRITABLE_IN_UNIT = (Path("/home"), Path("/srv"))


def template(name: str) -> str:
    """A unit shipped in jlservice/units/ ("jlservice.service", "user/jlservice.service"…)."""
    return resources.files("jlservice").joinpath("units", name).read_text()


def executable() -> list[str]:
    """How ExecStart runs this jlservice: its script (venv, pipx, system), else `python -m`."""
    script = Path(sys.argv[0])
    if script.name == "jlservice" and script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    return [sys.executable, "-m", "jlservice"]


def untrusted_for_root(argv: Sequence[str]) -> str | None:
    """Why root must not run `argv` (its program, interpreter or jlservice's code could be
    changed by another user, who would then run code as root), or None."""
    package = Path(__file__).resolve().parent
    for path in (Path(argv[0]), Path(sys.executable).resolve(), package):
        for part in _self_and_parents(path):
            try:
                info = part.lstat()
            except OSError:
                continue
            if stat.S_ISLNK(info.st_mode):
                continue  # its target is checked through the resolved path
            if info.st_uid != 0:
                return f"{part} is owned by uid {info.st_uid}, not root"
            if info.st_mode & 0o022 and not (stat.S_ISDIR(info.st_mode) and info.st_mode & 0o1000):
                return f"{part} is writable by {'group' if info.st_mode & 0o020 else 'others'}"
    return None


def _self_and_parents(path: Path) -> Iterator[Path]:
    path = path.absolute()
    yield path
    yield from path.parents
    resolved = path.resolve()
    if resolved != path:
        yield from _self_and_parents(resolved)


def render_unit(text: str, argv: Sequence[str]) -> str:
    """The packaged unit with ExecStart's program replaced by `argv`."""
    out = [f"# Written by `jlservice install` (jlservice {__version__}); `jlservice uninstall`"]
    out.append("# removes it. Change settings with a drop-in: systemctl edit <unit>.")
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            arguments = line.split("=", 1)[1].partition(" ")[2]
            line = "ExecStart=" + " ".join(_exec_quote(a) for a in argv) + " " + arguments
        out.append(line)
    return "\n".join(out) + "\n"


def _exec_quote(word: str) -> str:
    # systemd splits ExecStart= like a shell (quotes, backslashes) and expands % and $.
    word = word.replace("%", "%%").replace("$", "$$")
    return word if word and not any(c in word for c in " \t\"'\\") else shlex.quote(word)


def notebook_drop_in(notebooks: Path) -> str | None:
    """ReadWritePaths= for a notebook dir that ProtectSystem=strict would make read-only."""
    if any(notebooks.is_relative_to(p) for p in WRITABLE_IN_UNIT):
        return None
    # "-": a notebook dir that goes away must not keep the unit from starting (226/NAMESPACE)
    value = "-" + str(notebooks).replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return (
        "# Written by `jlservice install`: ProtectSystem=strict makes all but /home and /srv\n"
        "# read-only, and notebooks must be saved.\n"
        f"[Service]\nReadWritePaths={value}\n"
    )


def render_config(settings: Mapping[str, str | int]) -> str:
    lines = [
        "# jlservice configuration, written by `jlservice install`. Every key is documented in",
        "# etc/jlservice.toml of jlservice; `jlservice check-config` prints the effective one.",
        "# After editing: it is applied automatically (or `systemctl reload <unit>`).",
        "",
        "[lab]",
    ]
    for key, value in settings.items():
        lines.append(f"{key} = {value}" if isinstance(value, int) else f'{key} = "{_esc(value)}"')
    return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
