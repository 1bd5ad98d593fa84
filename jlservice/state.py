"""The state directory: login token, cookie secret and state.json.

Kept light on purpose: `jlservice token` and `jlservice status` import only this module
and config, so that printing the token costs little more than starting Python.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from jlservice import bounded

STATE_FILE = "state.json"
COOKIE_SECRET_FILE = "cookie_secret"
MAX_STATE_BYTES = 1 << 20  # a few kB in practice

STARTING, READY, BACKOFF, STOPPING, STOPPED, FAILED = (
    "starting",
    "ready",
    "backoff",
    "stopping",
    "stopped",
    "failed",
)


class StateError(Exception):
    """The state file cannot be used; str() says which problem and what to do."""


# secrets and base64 are imported where a secret is made, not on the `jlservice token` path.
def new_token() -> str:
    import secrets

    return secrets.token_hex(32)


def new_cookie_secret() -> bytes:
    import base64
    import secrets

    return base64.b64encode(secrets.token_bytes(48))


# NamedTuples rather than dataclasses: importing dataclasses (and inspect) would double the
# time `jlservice token` takes.
class LastExit(NamedTuple):
    code: int | None
    signal: int | None
    at: float
    reason: str


class LastReload(NamedTuple):
    at: float
    source: str  # SIGHUP, file
    result: str  # applied, unchanged, rejected, pending


class WarmParent(NamedTuple):
    pid: int
    ready: bool  # False while it imports


class State(NamedTuple):
    token: str
    url: str
    ip: str
    port: int
    base_url: str
    user: str
    notebook_dir: str
    config_path: str | None
    supervisor_pid: int | None
    supervisor_started_at: float | None
    lab_pid: int | None = None
    status: str = STARTING
    started_at: float | None = None
    ready_at: float | None = None
    restarts: int = 0
    last_exit: LastExit | None = None
    last_error: str | None = None
    config_error: str | None = None
    reload_pending: str | None = None
    last_reload: LastReload | None = None
    scheme: str = "http"
    token_login: bool = True  # False: [auth] token = false, password login only
    warm_parent: WarmParent | None = None
    started_warm: bool = False  # the running JupyterLab was forked by the warm parent

    def evolve(self, **changes: Any) -> State:
        return self._replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: v._asdict() if isinstance(v, tuple) else v for k, v in self._asdict().items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> State:
        data = dict(data)
        if data.get("last_exit") is not None:
            data["last_exit"] = LastExit(**data["last_exit"])
        if data.get("last_reload") is not None:
            data["last_reload"] = LastReload(**data["last_reload"])
        if data.get("warm_parent") is not None:
            data["warm_parent"] = WarmParent(**data["warm_parent"])
        known = set(cls._fields)
        return cls(**{k: v for k, v in data.items() if k in known})


def ensure_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Create `path` (and parents); give it `mode` (and `owner`) if it is ours to change.

    Never follows a symlink at `path`: a directory another user can write to could hold
    one pointing anywhere, and root would chown or chmod the target.
    """
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise OSError(
            exc.errno, f"{path} is not a plain directory ({exc.strerror})", str(path)
        ) from None
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        if os.fstat(fd).st_uid == os.geteuid() or owner is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def write_atomic(
    path: Path, data: bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Write `data` so that readers see the old or the new content, never a mix."""
    import tempfile  # O_EXCL with a random name: nothing planted in advance is followed

    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_state(state_dir: Path, state: State) -> None:
    write_atomic(state_dir / STATE_FILE, state.to_json().encode())


def read_state(state_dir: Path) -> State:
    path = state_dir / STATE_FILE
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        raise StateError(
            f"no state at {path}: jlservice has not run with this "
            "configuration (start it with `jlservice run`)"
        ) from None
    except PermissionError:
        owner = _owner(path)
        raise StateError(f"permission denied reading {path}: run as {owner} or root") from None
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return State.from_dict(bounded.loads(raw, MAX_STATE_BYTES))
    except (ValueError, TypeError) as exc:
        raise StateError(f"{path} is damaged ({exc}); restart jlservice to rewrite it") from None


def load_or_create_token(state_dir: Path) -> str:
    """The token of the previous run (so logged-in browsers stay logged in), else a new one."""
    try:
        token = read_state(state_dir).token
    except StateError:
        return new_token()
    return token if isinstance(token, str) and len(token) >= 48 else new_token()


def load_or_create_cookie_secret(state_dir: Path) -> bytes:
    path = state_dir / COOKIE_SECRET_FILE
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    secret = new_cookie_secret()
    write_atomic(path, secret)
    return secret


def write_cookie_secret(state_dir: Path, secret: bytes) -> None:
    write_atomic(state_dir / COOKIE_SECRET_FILE, secret)


def _owner(path: Path) -> str:
    try:
        import pwd

        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return "its owner"


def login_url(state: State, url: str | None = None) -> str:
    """The URL that logs in (`url`: another address of the same server, e.g. a tunnel's)."""
    url = url or state.url
    return f"{url}lab?token={state.token}" if state.token_login else f"{url}lab"


def supervisor_alive(state: State) -> bool:
    """Whether the supervisor recorded in `state` still runs (guarding against pid reuse)."""
    pid, started = state.supervisor_pid, state.supervisor_started_at
    if not pid or started is None:
        return False
    start = process_start_time(pid)
    return start is not None and abs(start - started) < 1.0


def process_start_time(pid: int) -> float | None:
    """Start time of `pid` in seconds since the epoch, from /proc (no psutil import)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime"))
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid`, from /proc (readable for any process; no psutil import)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None
