"""state.json: what the supervisor publishes (its Publisher writes it, alone), and how the
commands read it.

Kept light on purpose: `jlservice token` and `jlservice status` import only this module,
login and config, so that printing the token costs little more than starting Python.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from jlservice import bounded, files, procfs
from jlservice.errors import StateError

STATE_FILE = "state.json"  # what the supervisor publishes; written by it alone
MAX_STATE_BYTES = 1 << 20  # a few kB in practice

STARTING, READY, BACKOFF, STOPPING, STOPPED, FAILED = (
    "starting",
    "ready",
    "backoff",
    "stopping",
    "stopped",
    "failed",
)


# NamedTuples rather than dataclasses: importing dataclasses (and inspect) would double the
# time `jlservice token` takes.
class LastExit(NamedTuple):
    code: int | None
    signal: int | None
    at: float
    reason: str

    def describe(self) -> str:
        return describe_exit(self.code, self.signal)


def describe_exit(code: int | None, signum: int | None) -> str:
    """How a process ended, for people: killed by SIGKILL, exited with status 1."""
    if signum is not None:
        import signal  # imports enum: not on `jlservice token`'s path

        try:
            return f"killed by {signal.Signals(signum).name}"
        except ValueError:  # real-time signals have no name
            return f"killed by signal {signum}"
    return f"exited with status {code}"


class LastReload(NamedTuple):
    at: float
    source: str  # SIGHUP, file
    result: str  # applied, unchanged, rejected, pending
    sequence: int = 0  # State.sequence of the record that answered it


class WarmParent(NamedTuple):
    pid: int
    ready: bool  # False while it imports


class KeptKernels(NamedTuple):
    """Kernels across the last restart of JupyterLab ([kernels] survive_restarts)."""

    kept: int  # alive when it exited, kept for the next one
    adopted: int  # of those, adopted by the running one
    waiting: int  # of those, still waiting to be adopted (ended after [kernels] grace)


class OomKill(NamedTuple):
    """The last process of this service the OOM killer ended."""

    at: float
    pid: int | None  # None: known from the kernel's cgroup alone
    process: str
    kernel_id: str | None  # None: no kernel's (JupyterLab, a terminal, jlservice)
    notebook: str
    memory_bytes: int  # what the process had resident
    limit_bytes: int | None  # of the cgroup that ran out; None: the machine's memory


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
    # How many times this supervisor has changed it: which of two records is newer, and
    # whether a reload was answered, whatever steps the wall clock takes.
    sequence: int = 0
    stuck_pids: tuple[int, ...] = ()  # leftovers SIGKILL did not end, left behind
    supervisor_start_ticks: int | None = None  # procfs.start_ticks: its identity
    # Set in the runtime dir's copy, written while state.json in the state dir cannot be.
    state_error: str | None = None
    lab_uid: int | None = None  # the lab user the token and cookie secret were handed to
    kernels: KeptKernels | None = None
    oom_kills: int = 0  # processes of this service the OOM killer ended, in all
    last_oom_kill: OomKill | None = None
    limits: str | None = None  # [kernels] memory_max: "on: …" or "off: why"

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
        if data.get("kernels") is not None:
            data["kernels"] = KeptKernels(**data["kernels"])
        if data.get("last_oom_kill") is not None:
            data["last_oom_kill"] = OomKill(**data["last_oom_kill"])
        if "stuck_pids" in data:
            data["stuck_pids"] = tuple(data["stuck_pids"])
        known = set(cls._fields)
        return cls(**{k: v for k, v in data.items() if k in known})


def write_state(state_dir: Path, state: State) -> None:
    files.write_atomic(state_dir / STATE_FILE, state.to_json().encode())


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
    return spare if _newer(spare, main) else main


def _newer(a: State, b: State) -> bool:
    """Whether `a` was published after `b`: by the sequence when one supervisor wrote both,
    else the running supervisor's, else (both gone) by the wall clock."""
    if writer(a) == writer(b) and (a.sequence or b.sequence):  # 0, 0: an older jlservice's
        return a.sequence > b.sequence
    alive_a, alive_b = supervisor_alive(a), supervisor_alive(b)
    if alive_a != alive_b:
        return alive_a
    return a.updated_at > b.updated_at


def writer(record: State) -> tuple[int | None, int | None, float | None]:
    """Which supervisor published `record` (a pid alone may be reused)."""
    return record.supervisor_pid, record.supervisor_start_ticks, record.supervisor_started_at


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
    if not pid:
        return False
    if state.supervisor_start_ticks is not None:  # a wall-clock step changes nothing
        return procfs.start_ticks(pid) == state.supervisor_start_ticks
    if started is None:  # a state file of an older jlservice: by the wall clock
        return False
    start = procfs.start_time(pid)
    return start is not None and abs(start - started) < 1.0
