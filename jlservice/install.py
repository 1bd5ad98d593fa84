"""Put jlservice where systemd looks: a configuration file (never overwritten) and a unit
whose ExecStart runs the jlservice that is doing the installing.

`Target` says where one kind of install goes (system unit, template instance, user unit);
install() and uninstall() are idempotent and return what they did, line by line.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from jlservice import __version__, config, state
from jlservice.config.service import DEFAULT_PATH, user_config_path

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
# What the system units' ReadWritePaths= already open under ProtectSystem=strict.
WRITABLE_IN_UNIT = (Path("/home"), Path("/srv"))
NOTEBOOK_DROP_IN = "jlservice-notebook-dir.conf"


class InstallError(Exception):
    """Install or uninstall cannot go on; str() says why and what to do, `done` what was
    already done before it stopped."""

    def __init__(self, message: str, done: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.done = list(done)


class Target(NamedTuple):
    service: str  # what systemctl enables: jlservice, jlservice@alice
    unit_file: str  # the file in jlservice/units/ and its name in unit_dir
    unit_dir: Path
    config_path: Path
    systemctl: tuple[str, ...]


def system_target(instance: str | None = None) -> Target:
    if instance is None:
        unit = "jlservice.service"
        return Target("jlservice", unit, SYSTEM_UNIT_DIR, DEFAULT_PATH, ("systemctl",))
    if not instance or "/" in instance or instance.startswith(".") or "@" in instance:
        raise InstallError(f"instance name {instance!r} must be a plain name such as a user name")
    return Target(
        f"jlservice@{instance}",
        "jlservice@.service",
        SYSTEM_UNIT_DIR,
        DEFAULT_PATH.parent / f"{instance}.toml",
        ("systemctl",),
    )


def user_target(environ: Mapping[str, str]) -> Target:
    home = Path(environ.get("HOME") or Path.home())
    xdg = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    return Target(
        "jlservice",
        "user/jlservice.service",
        xdg / "systemd" / "user",
        user_config_path(environ),
        ("systemctl", "--user"),
    )


def executable() -> list[str]:
    """How ExecStart runs this jlservice: its script (venv, pipx, system), else `python -m`."""
    script = Path(sys.argv[0])
    if script.name == "jlservice" and script.is_file() and os.access(script, os.X_OK):
        return [str(script.absolute())]
    return [sys.executable, "-m", "jlservice"]


def render_unit(template: str, argv: Sequence[str]) -> str:
    """The packaged unit with ExecStart's program replaced by `argv`."""
    out = [f"# Written by `jlservice install` (jlservice {__version__}); `jlservice uninstall`"]
    out.append("# removes it. Change settings with a drop-in: systemctl edit <unit>.")
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            arguments = line.split("=", 1)[1].partition(" ")[2]
            line = "ExecStart=" + " ".join(_systemd_quote(a) for a in argv) + " " + arguments
        out.append(line)
    return "\n".join(out) + "\n"


def _systemd_quote(word: str) -> str:
    # systemd splits ExecStart= like a shell (quotes, backslashes) and expands % and $.
    word = word.replace("%", "%%").replace("$", "$$")
    return word if word and not any(c in word for c in " \t\"'\\") else shlex.quote(word)


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


Run = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def install(target: Target, settings: Mapping[str, str | int], run: Run = _run) -> list[str]:
    """Write the config (if absent) and the unit, then daemon-reload. Returns what was done."""
    done = []
    if target.config_path.exists():
        done.append(f"kept {target.config_path} (it exists; install never overwrites it)")
        given = [k for k in settings if k != "user"]
        if given:
            done.append(f"  not applied to it: {', '.join(given)}; edit the file to change them")
    else:
        text = render_config(settings)
        # Validate exactly what will be read at start: a bad --user or --notebook-dir fails now.
        config.parse_text(text, target.config_path)
        state.ensure_dir(target.config_path.parent, 0o755)
        state.write_atomic(target.config_path, text.encode(), mode=0o644)
        done.append(f"wrote {target.config_path}")
    unit_path = target.unit_dir / target.unit_file.rsplit("/", 1)[-1]
    template = resources.files("jlservice").joinpath("units", target.unit_file).read_text()
    unit = render_unit(template, executable())
    if unit_path.exists() and unit_path.read_text() == unit:
        done.append(f"{unit_path} is up to date")
    else:
        state.ensure_dir(unit_path.parent, 0o755)
        state.write_atomic(unit_path, unit.encode(), mode=0o644)
        done.append(f"wrote {unit_path}")
    if target.systemctl == ("systemctl",):  # the user unit does not protect the file system
        done += _notebook_drop_in(target)
    _systemctl(target, run, done, "daemon-reload")
    return done


def _notebook_drop_in(target: Target) -> list[str]:
    """ReadWritePaths= for a notebook dir outside /home and /srv, which ProtectSystem=strict
    would make read-only; kept in step with the config's notebook_dir."""
    path = target.unit_dir / f"{target.service}.service.d" / NOTEBOOK_DROP_IN
    try:
        notebooks = config.load(target.config_path).lab.notebook_dir
    except config.ConfigError as exc:
        return [f"warning: {exc}; fix it before starting the service"]
    if any(notebooks.is_relative_to(p) for p in WRITABLE_IN_UNIT):
        if path.exists():
            path.unlink()
            return [f"removed {path} ({notebooks} is writable without it)"]
        return []
    value = str(notebooks).replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    text = (
        "# Written by `jlservice install`: ProtectSystem=strict makes all but /home and /srv\n"
        "# read-only, and notebooks must be saved.\n"
        f"[Service]\nReadWritePaths={value}\n"
    )
    if path.exists() and path.read_text() == text:
        return [f"{path} is up to date"]
    state.ensure_dir(path.parent, 0o755)
    state.write_atomic(path, text.encode(), mode=0o644)
    return [f"wrote {path} (makes {notebooks} writable for the service)"]


def uninstall(target: Target, purge: bool, run: Run = _run) -> list[str]:
    """Stop and disable the service, remove its unit; with purge its config and state too."""
    done = []
    unit_path = target.unit_dir / target.unit_file.rsplit("/", 1)[-1]
    if _systemctl(target, run, done, "cat", target.service, check=False).returncode == 0:
        _systemctl(target, run, done, "disable", "--now", target.service)
        done.append(f"stopped and disabled {target.service}")
    other_instances = target.unit_file.endswith("@.service") and any(
        p.name != f"{target.service}.service"
        for p in target.unit_dir.glob("*.wants/jlservice@*.service")
    )
    if other_instances:
        done.append(f"kept {unit_path} (other jlservice@ instances are enabled)")
    elif unit_path.exists():
        unit_path.unlink()
        shutil.rmtree(unit_path.with_name(unit_path.name + ".d"), ignore_errors=True)
        done.append(f"removed {unit_path}")
    (target.unit_dir / f"{target.service}.service.d" / NOTEBOOK_DROP_IN).unlink(missing_ok=True)
    if purge:
        done += _purge(target)
    elif target.config_path.exists():
        done.append(f"kept {target.config_path} and the state (--purge removes them)")
    _systemctl(target, run, done, "daemon-reload")
    return done


def _purge(target: Target) -> list[str]:
    done = []
    if target.config_path.exists():
        service = config.load_service(target.config_path, environ={})
        target.config_path.unlink()
        done.append(f"removed {target.config_path}")
    else:
        service = config.load_service(None, environ={})
    # Only files: the default service's state dir also holds the instances' state dirs.
    if service.state_dir.is_dir():
        for entry in service.state_dir.iterdir():
            if entry.is_file() or entry.is_symlink():
                entry.unlink()
        done.append(f"removed the state in {service.state_dir}")
        with contextlib.suppress(OSError):  # not empty: other instances live in it
            service.state_dir.rmdir()
    return done


def _systemctl(
    target: Target, run: Run, done: list[str], *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    try:
        result = run([*target.systemctl, *args])
    except FileNotFoundError:
        raise InstallError(
            "systemctl not found: this machine does not run systemd; start jlservice with "
            "`jlservice run` from your own init system",
            done,
        ) from None
    if check and result.returncode != 0:
        why = (result.stderr or result.stdout).strip().splitlines()
        raise InstallError(
            f"`{' '.join((*target.systemctl, *args))}` failed: {why[0] if why else 'no output'}",
            done,
        )
    return result
