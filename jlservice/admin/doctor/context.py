"""What the doctor's checks look at, read once, and what each check answers."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from jlservice import config, listener, state, users
from jlservice.config import Config


class Result(NamedTuple):
    name: str
    ok: bool | None  # None: does not apply here (counts as passing)
    detail: str
    fix: str = ""  # what to do, when not ok

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "-"}[self.ok]
        text = f"{mark} {self.name}: {self.detail}"
        return f"{text} → {self.fix}" if self.ok is False and self.fix else text

    @property
    def passed(self) -> bool:
        return self.ok is not False


class Context(NamedTuple):
    path: Path | None
    config: Config | None
    config_error: str | None
    state: state.State | None
    state_error: str | None
    running: bool
    # Who, instead of jlservice's JupyterLab, holds the port the state file names: the
    # checks that send the token must not send it there.
    stranger: str | None = None

    @classmethod
    def read(cls, path: Path | None) -> Context:
        try:
            cfg, error = config.load(path), None
        except config.ConfigError as exc:
            cfg, error = None, str(exc)
        current = state_error = None
        try:
            service = cfg.service if cfg else config.load_service(path)
            current = state.read_published(service.state_dir, service.runtime_dir)
        except config.ConfigError:
            pass  # where the state is cannot be known; the config check says why
        except state.StateError as exc:
            state_error = str(exc)
        running = current is not None and state.supervisor_alive(current)
        stranger = None
        if running and current.status == state.READY and current.lab_pid:
            stranger = lab_stranger(current)
        return cls(path, cfg, error, current, state_error, running, stranger)

    @property
    def lab_serving(self) -> bool:
        """jlservice runs, says its JupyterLab is ready, and that JupyterLab holds the port."""
        return self.running and self.state.status == state.READY and self.stranger is None


def lab_stranger(s: state.State) -> str | None:
    account = users.lookup(s.user)
    uid = account.uid if account is not None else -1  # nobody's socket is then the lab's
    return listener.stranger(s.ip, s.port, s.lab_pid, uid)


def not_checked(name: str, why: str) -> Result:
    return Result(name, None, f"not checked: {why}")


NEEDS_CONFIG = "the configuration is invalid (see above)"
PORT_TAKEN_FIX = "stop that process; `jlservice status` and the log say what happened to JupyterLab"
NEEDS_LAB = "JupyterLab is not serving (see above)"
