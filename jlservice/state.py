"""The state directory: login token, cookie secret and state.json.

Kept light on purpose: `jlservice token` and `jlservice status` import only this module
and config, so that printing the token costs little more than starting Python.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from jlservice import bounded
from jlservice.errors import StateError

STATE_FILE = "state.json"  # what the supervisor publishes; written by it alone
TOKEN_FILE = "token"  # the secrets JupyterLab is started with
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
    updated_at: float = 0.0  # when the supervisor last changed it (time.time())
    stuck_pids: tuple[int, ...] = ()  # leftovers SIGKILL did not end, left behind
    # Set in the runtime dir's copy, written while state.json in the state dir cannot be.
    state_error: str | None = None
    lab_uid: int | None = None  # the lab user the token and cookie secret were handed to

    def evolve(self, **changes: Any) -> State:
        return self._replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: v._asdict() if hasattr(v, "_asdict") else v for k, v in self._asdict().items()}

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
        if "stuck_pids" in data:
            data["stuck_pids"] = tuple(data["stuck_pids"])
        known = set(cls._fields)
        return cls(**{k: v for k, v in data.items() if k in known})


def ensure_dir(path: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Create `path` (and parents) with `mode` and `owner` (default: ours), or check the
    directory already there and give it that mode and owner.

    An existing one must be a plain directory, never a symlink (root would chown or chmod
    the target), owned by us or `owner`; one of ours must be writable by nobody else. Whoever
    else could write to it may have planted files in it (a token they know, a cookie secret)
    or links. Raises OSError whose strerror says what is wrong and what to do.
    """
    uid, gid = owner or (os.geteuid(), os.getegid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, mode)
        made = True
    except FileExistsError:
        made = False
    except OSError as exc:
        why = f"cannot create {path}: {exc.strerror}; create it or choose another directory"
        raise OSError(exc.errno, why) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise OSError(exc.errno, f"{path} is not a plain directory ({exc.strerror})") from None
    try:
        if not made:
            _check_existing(path, os.fstat(fd), uid)
        if owner is not None:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _check_existing(path: Path, st: os.stat_result, uid: int) -> None:
    me = os.geteuid()
    if st.st_uid not in (me, uid):
        raise PermissionError(
            errno.EPERM,
            f"{path} belongs to {_user_name(st.st_uid)}, not {_user_name(uid)}, who may have "
            "left files or links in it: remove it (jlservice makes a new one) or choose "
            "another directory",
        )
    if st.st_uid == me and st.st_mode & 0o022:
        raise PermissionError(
            errno.EPERM,
            f"{path} is writable by others (mode {st.st_mode & 0o7777:04o}), who may have left "
            f"files or links in it: check what is in it, then `chmod go-w {path}`",
        )


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


def read_published(state_dir: Path, runtime_dir: Path) -> State:
    """What the supervisor published last: state.json in the state dir, or the copy in the
    runtime dir that it writes while the state dir cannot be written (full, read-only)."""
    try:
        spare = read_state(runtime_dir)
    except StateError:
        return read_state(state_dir)
    try:
        main = read_state(state_dir)
    except StateError:
        return spare
    return spare if spare.updated_at > main.updated_at else main


def load_or_create_token(state_dir: Path) -> str:
    """The token of the previous run (so logged-in browsers stay logged in), else a new one."""
    try:
        token = (state_dir / TOKEN_FILE).read_text()
        if _usable(token):
            return token
    except FileNotFoundError:
        # jlservice 0.1 kept it in state.json alone (beside its cookie secret). Without the
        # cookie secret, the secrets were removed on purpose: the old token must not return.
        had_secrets = (state_dir / COOKIE_SECRET_FILE).exists()
        token = _published_token(state_dir) if had_secrets else None
    except (OSError, UnicodeDecodeError):
        token = None
    if not _usable(token):
        token = new_token()
    write_token(state_dir, token)
    return token


def _published_token(state_dir: Path) -> str | None:
    try:
        return read_state(state_dir).token
    except StateError:
        return None


def _usable(token: object) -> bool:
    return isinstance(token, str) and len(token) >= 48 and token.isalnum()


def write_token(state_dir: Path, token: str) -> None:
    write_atomic(state_dir / TOKEN_FILE, token.encode())


class Secrets(NamedTuple):
    """What JupyterLab is given to log people in with."""

    token: str
    cookie_secret: bytes


def load_secrets(state_dir: Path, lab_uid: int, lab_user: str) -> tuple[Secrets, str | None]:
    """The token and cookie secret of the previous run (so logged-in browsers stay logged
    in) if they were handed to the lab user `lab_uid`, else new ones, saved at once; and,
    when kept ones were replaced, whom they had been handed to (for the log).

    The lab user can read both (JupyterLab needs them), so a new lab user never inherits
    them: the old one could log in to the new one's JupyterLab, or forge its cookies.
    """
    try:
        kept = read_state(state_dir)
    except StateError:  # a first start (or a damaged state): no kept token to honour
        kept = None
    if kept is not None and _handed_to(kept, lab_uid, lab_user):
        token = load_or_create_token(state_dir)
        return Secrets(token, load_or_create_cookie_secret(state_dir)), None
    secrets = Secrets(new_token(), new_cookie_secret())
    with contextlib.suppress(OSError):  # a full disk: in use all the same, said by the state
        save_secrets(state_dir, *secrets)
    return secrets, _holder(kept)


def _handed_to(kept: State, lab_uid: int, lab_user: str) -> bool:
    if kept.lab_uid is None:  # written before jlservice recorded the uid: the name says
        return kept.user == lab_user
    return type(kept.lab_uid) is int and kept.lab_uid == lab_uid


def _holder(kept: State | None) -> str | None:
    """Who was handed the kept secrets, for the log (None: nobody, a first start)."""
    if kept is None:
        return None
    if type(kept.lab_uid) is not int:
        return f"{kept.user} (uid not recorded)"
    return f"{kept.user} (uid {kept.lab_uid})"


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


def save_secrets(state_dir: Path, token: str, cookie_secret: bytes) -> None:
    """Replace both secrets; if that fails, remove the old ones (that needs no space), so
    that a rotated token cannot come back with the next start."""
    try:
        write_token(state_dir, token)
        write_cookie_secret(state_dir, cookie_secret)
    except OSError:
        for name in (TOKEN_FILE, COOKIE_SECRET_FILE):
            with contextlib.suppress(OSError):
                (state_dir / name).unlink()
        raise


def write_cookie_secret(state_dir: Path, secret: bytes) -> None:
    write_atomic(state_dir / COOKIE_SECRET_FILE, secret)


def _owner(path: Path) -> str:
    try:
        import pwd

        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return "its owner"


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


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
