"""Put jlservice where systemd looks: a configuration file (never overwritten) and a unit
whose ExecStart runs the jlservice that is doing the installing.

`Target` says where one kind of install goes (system unit, template instance, user unit);
install() and uninstall() are idempotent and return what they did, line by line.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from jlservice import config, files, login, state, users
from jlservice.admin import unit_files
from jlservice.config.reader import Reader
from jlservice.config.service import DEFAULT_PATH, parse_service, user_config_path
from jlservice.errors import InstallError

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
# What jlservice keeps in a state dir: `uninstall --purge` removes these and nothing else
# (temporary files of interrupted atomic writes included).
STATE_FILES = (
    state.STATE_FILE,
    login.TOKEN_FILE,
    login.COOKIE_SECRET_FILE,
    "password",
    "tls.crt",
    "tls.key",
)
INSTANCE_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # a user name, as useradd accepts it


class Target(NamedTuple):
    service: str  # what systemctl enables: jlservice, jlservice@alice
    unit_file: str  # the file in jlservice/units/
    unit_dir: Path
    config_path: Path
    systemctl: tuple[str, ...]

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / self.unit_file.rsplit("/", 1)[-1]

    @property
    def drop_in_dir(self) -> Path:
        return self.unit_dir / f"{self.service}.service.d"

    @property
    def system(self) -> bool:
        return self.systemctl == ("systemctl",)


def system_target(instance: str | None = None) -> Target:
    if instance is None:
        unit = "jlservice.service"
        return Target("jlservice", unit, SYSTEM_UNIT_DIR, DEFAULT_PATH, ("systemctl",))
    if not INSTANCE_NAME.fullmatch(instance) or instance == "jlservice":
        raise InstallError(
            f"instance name {instance!r}: use a user name (lower-case letters, digits, - and _), "
            "not 'jlservice'"
        )
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


Run = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def install(
    target: Target, given: Mapping[str, str | int], default_user: str | None, run: Run = _run
) -> list[str]:
    """Write the config (if absent), the unit and its notebook-dir drop-in, daemon-reload.

    `given`: the [lab] settings asked for (user, notebook_dir, ip, port); `default_user`:
    whom JupyterLab runs as when `given` names nobody (None for the user unit: oneself).
    """
    argv = unit_files.executable()
    if target.system and (why := unit_files.untrusted_for_root(argv)):
        raise InstallError(
            f"the service would run {argv[0]} as root, but {why}: install jlservice where only "
            "root can change it (e.g. `/usr/bin/python3 -m venv /opt/jlservice`) and run "
            "install from there"
        )
    done: list[str] = []
    if target.config_path.exists():
        done += _keep_config(target, given)
    else:
        done += _write_config(target, given, default_user)
    unit = unit_files.render_unit(unit_files.template(target.unit_file), argv)
    existed = target.unit_path.exists()
    if existed and target.unit_path.read_text() == unit:
        done.append(f"{target.unit_path} is up to date")
        changed = False
    else:
        target.unit_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        files.write_atomic(target.unit_path, unit.encode(), mode=0o644)
        done.append(f"wrote {target.unit_path}")
        changed = existed
    if target.system:
        done += _notebook_drop_in(target)
    _systemctl(target, run, done, "daemon-reload")
    if changed:
        done.append(f"the unit changed: `{' '.join(target.systemctl)} restart {target.service}`")
    return done


def _write_config(target: Target, given: Mapping[str, str | int], user: str | None) -> list[str]:
    settings = dict(given)
    name = settings.setdefault("user", user) if target.system else None
    if target.system and not name:
        raise InstallError(
            "name the account JupyterLab runs as: jlservice install --user NAME "
            "(running it as root needs [lab] allow_root, which install does not set)"
        )
    if "@" in target.service and "port" not in settings:  # jlservice@NAME beside others
        raise InstallError("give the instance a port of its own: --port N")
    account = users.lookup(name) if name else users.current()
    if account is None:
        raise InstallError(f"no such user {name!r}: create it first (useradd)")
    settings["notebook_dir"] = str(Path(settings.get("notebook_dir") or account.home).absolute())
    text = unit_files.render_config(settings)
    # Validate exactly what will be read at start: a bad --user or --notebook-dir fails now.
    config.parse_text(text, target.config_path)
    target.config_path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    files.write_atomic(target.config_path, text.encode(), mode=0o644)
    return [f"wrote {target.config_path}"]


def _keep_config(target: Target, given: Mapping[str, str | int]) -> list[str]:
    done = [f"kept {target.config_path} (it exists; install never overwrites it)"]
    try:
        lab = config.load(target.config_path).lab
    except config.ConfigError as exc:
        return [*done, f"warning: {exc}; fix it before starting the service"]
    differ = [
        f"{key} (the file says {getattr(lab, key)}, not {value})"
        for key, value in given.items()
        if str(getattr(lab, key)) != str(Path(value).absolute() if key == "notebook_dir" else value)
    ]
    if differ:
        done.append(f"  not applied: {'; '.join(differ)}; edit the file to change them")
    return done


def _notebook_drop_in(target: Target) -> list[str]:
    """Kept in step with the config's notebook_dir; the admin's own drop-ins are not touched."""
    path = target.drop_in_dir / unit_files.NOTEBOOK_DROP_IN
    try:
        notebooks = config.load(target.config_path).lab.notebook_dir
    except config.ConfigError:
        return []  # said already
    text = unit_files.notebook_drop_in(notebooks)
    if text is None:
        if path.exists():
            path.unlink()
            return [f"removed {path} ({notebooks} is writable without it)"]
        return []
    if path.exists() and path.read_text() == text:
        return [f"{path} is up to date"]
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # an existing one keeps its mode
    files.write_atomic(path, text.encode(), mode=0o644)
    return [f"wrote {path} (makes {notebooks} writable for the service)"]


def uninstall(target: Target, purge: bool, run: Run = _run) -> list[str]:
    """Stop and disable the service, remove its unit; with purge its config and state too."""
    done: list[str] = []
    if _systemctl(target, run, done, "cat", target.service, check=False).returncode == 0:
        _systemctl(target, run, done, "disable", "--now", target.service)
        done.append(f"stopped and disabled {target.service}")
    others = target.unit_file.endswith("@.service") and any(
        p.name != f"{target.service}.service"
        for p in target.unit_dir.glob("*.wants/jlservice@*.service")
    )
    if others:
        done.append(f"kept {target.unit_path} (other jlservice@ instances are enabled)")
    elif target.unit_path.exists():
        target.unit_path.unlink()
        done.append(f"removed {target.unit_path}")
    drop_in = target.drop_in_dir / unit_files.NOTEBOOK_DROP_IN
    if drop_in.exists():
        drop_in.unlink()
        done.append(f"removed {drop_in}")
    with contextlib.suppress(OSError):  # not there, or the admin's own drop-ins are in it
        target.drop_in_dir.rmdir()
    if target.drop_in_dir.exists():
        done.append(f"kept your drop-ins in {target.drop_in_dir}")
    if purge:
        done += _purge(target)
    elif target.config_path.exists():
        done.append(f"kept {target.config_path} and the state (--purge removes them)")
    _systemctl(target, run, done, "daemon-reload")
    return done


def _purge(target: Target) -> list[str]:
    done = []
    try:
        service = config.load_service(target.config_path, environ={})
    except config.ConfigError as exc:
        done.append(f"warning: {exc}; removing the state from the default place")
        reader = Reader(str(target.config_path))
        service = parse_service(reader, {}, {}, target.config_path)
    if target.config_path.exists():
        target.config_path.unlink()
        done.append(f"removed {target.config_path}")
    removed = []
    if service.state_dir.is_dir():
        for entry in service.state_dir.iterdir():
            ours = entry.name in STATE_FILES or any(
                entry.name.startswith(f".{name}.") for name in STATE_FILES
            )
            if ours and not entry.is_dir():
                entry.unlink()
                removed.append(entry.name)
        with contextlib.suppress(OSError):  # not empty: instances' state, or other files
            service.state_dir.rmdir()
    if removed:
        done.append(f"removed the state in {service.state_dir}: {', '.join(sorted(removed))}")
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
