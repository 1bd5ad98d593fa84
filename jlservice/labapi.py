"""JupyterLab's REST API as root asks it: its kernels (their state and activity), sessions
(kernel id → notebook path) and version, a kernel shut down if idle, an event posted to its
tabs; and which kernel a connection file names.

Which process is which kernel is metrics.usage's to say, from /proc and the connection file
each kernel names (connection_file_id). Blocking calls: callers run them off the loop.

JupyterLab runs as the lab user, so what it answers is read as untrusted: capped in bytes,
time and depth, and only the shapes expected are taken.
"""

from __future__ import annotations

import datetime
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jlservice import bounded, listener, localhttp

if TYPE_CHECKING:
    from jlservice.start.launcher import Launch

_KERNEL_FILE = re.compile(r"kernel-([0-9A-Za-z-]+)\.json")
_APP_VERSION = re.compile(r'"appVersion":\s*"([\w.+-]{1,64})"')
# The execution states a label may name; kernels are the lab user's code and could report
# a new string every time (a series each): anything else counts as "unknown".
STATES = frozenset(
    {"starting", "idle", "busy", "restarting", "autorestarting", "terminating", "dead"}
)
_MAX_BYTES = 8 * 1024 * 1024  # of one answer: thousands of sessions fit
MAX_PATH = 4096  # characters of a notebook path (Linux's PATH_MAX is 4096 bytes)


@dataclass(frozen=True)
class Endpoint:
    """How root reaches the JupyterLab that is ready now."""

    api_url: str  # http://HOST:PORT{base_url}api
    token: str
    pid: int
    uid: int  # the lab user's: its kernels run as this uid
    runtime_dir: str  # JUPYTER_RUNTIME_DIR, where its kernels' connection files are

    @classmethod
    def of(cls, launch: Launch, token: str, pid: int) -> Endpoint:
        uid, runtime_dir = launch.account.uid, str(launch.jupyter_runtime_dir)
        return cls(launch.api_url, token, pid, uid, runtime_dir)


@dataclass(frozen=True)
class Activity:
    """What JupyterLab says of one kernel."""

    state: str = "unknown"  # one of STATES, or "unknown"
    last_activity: float | None = None  # Unix time
    connections: int = 0  # websockets open to it (tabs)


@dataclass(frozen=True)
class Kernels:
    states: dict[str, int]  # execution_state -> number of kernels
    notebooks: dict[str, str]  # kernel id -> notebook path ("" for a kernel of no session)
    activity: dict[str, Activity] = field(default_factory=dict, compare=False)


def fetch(endpoint: Endpoint, timeout: float, sessions: bool = True) -> Kernels | None:
    """JupyterLab's kernels and (with `sessions`) their notebooks, or None if it does not
    answer as JupyterLab does."""
    try:
        kernels = _get(endpoint, "/kernels", timeout)
        found = _get(endpoint, "/sessions", timeout) if sessions else []
    except localhttp.ERRORS:  # bounded.Malformed is a ValueError
        return None
    if not isinstance(kernels, list) or not isinstance(found, list):
        return None
    states: dict[str, int] = {"idle": 0, "busy": 0}
    notebooks = {}
    activity = {}
    for kernel in kernels:
        if not isinstance(kernel, dict) or not isinstance(kernel.get("id"), str):
            continue
        state = kernel.get("execution_state")
        state = state if isinstance(state, str) and state in STATES else "unknown"
        states[state] = states.get(state, 0) + 1
        notebooks[kernel["id"]] = ""
        connections = kernel.get("connections")
        activity[kernel["id"]] = Activity(
            state,
            _timestamp(kernel.get("last_activity")),
            connections if isinstance(connections, int) and connections >= 0 else 0,
        )
    for session in found:
        if not isinstance(session, dict):
            continue
        kernel = session.get("kernel")
        kernel_id = kernel.get("id") if isinstance(kernel, dict) else None
        path = session.get("path")
        if isinstance(kernel_id, str) and kernel_id in notebooks and isinstance(path, str):
            notebooks[kernel_id] = _printable(path)
    return Kernels(states, notebooks, activity)


def _printable(path: str) -> str:
    """A notebook path as a label: at most MAX_PATH characters, valid UTF-8 (a server
    extension of the lab user's may answer anything: a lone surrogate cannot be encoded)."""
    return path[:MAX_PATH].encode("utf-8", "replace").decode()


def _timestamp(value: object) -> float | None:
    """An ISO 8601 time as JupyterLab writes it (…Z), as Unix time."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp() if when.tzinfo is not None else None


def lab_version(endpoint: Endpoint, timeout: float) -> str | None:
    """JupyterLab's version, from the page config its /lab page carries."""
    url = endpoint.api_url.removesuffix("api") + "lab"
    try:
        page = _open(_request(endpoint, url), timeout).decode(errors="replace")
    except localhttp.ERRORS:
        return None
    match = _APP_VERSION.search(page)
    return match[1] if match else None


def _request(endpoint: Endpoint, url: str, **kw: Any) -> localhttp.Request:
    """A request with the token, sent only to jlservice's JupyterLab, not to a process that
    took the port after it died (localhttp.Request's `stranger`)."""
    address = urllib.parse.urlsplit(endpoint.api_url)

    def stranger() -> str | None:
        return listener.stranger(address.hostname, address.port, endpoint.pid, endpoint.uid)

    headers = {"Authorization": f"token {endpoint.token}", **kw.pop("headers", {})}
    return localhttp.Request(url, stranger, headers=headers, **kw)


def shut_down_if_idle(endpoint: Endpoint, kernel_id: str, since: float, timeout: float) -> bool:
    """Shut kernel `kernel_id` down if JupyterLab says it is still idle, with no activity
    after `since` (Unix time): a cell started since the round that chose it keeps it."""
    try:
        kernel = _get(endpoint, f"/kernels/{urllib.parse.quote(kernel_id)}", timeout)
    except localhttp.ERRORS:
        return False
    if not isinstance(kernel, dict) or kernel.get("execution_state") != "idle":
        return False
    last = _timestamp(kernel.get("last_activity"))
    if last is None or last > since:
        return False
    url = f"{endpoint.api_url}/kernels/{urllib.parse.quote(kernel_id)}"
    request = _request(endpoint, url, method="DELETE")
    try:
        with localhttp.OPENER.open(request, timeout=timeout) as response:
            return response.status == 204
    except localhttp.ERRORS:
        return False


def post_event(endpoint: Endpoint, event: dict[str, Any], timeout: float) -> bool:
    """`event` (schema_id, version, data) emitted on JupyterLab's event bus, to every open
    tab (POST api/events, whose schema a server extension registered); whether JupyterLab
    took it. One that does not answer costs the caller `timeout` (localhttp says how)."""
    request = _request(
        endpoint,
        f"{endpoint.api_url}/events?no_track_activity=1",
        data=json.dumps(event).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with localhttp.OPENER.open(request, timeout=timeout) as response:
            return response.status == 204
    except localhttp.ERRORS:  # urllib's HTTPError (a 400, a 403) is an OSError
        return False


def _get(endpoint: Endpoint, path: str, timeout: float) -> Any:
    # Looking must not count as activity: the server would never look idle to its cullers.
    request = _request(endpoint, f"{endpoint.api_url}{path}?no_track_activity=1")
    return bounded.loads(_open(request, timeout), _MAX_BYTES)


def _open(request: localhttp.Request, timeout: float) -> bytes:
    """The body, at most _MAX_BYTES (`timeout` for the whole answer: localhttp)."""
    url = request.full_url
    chunks: list[bytes] = []
    size = 0
    with localhttp.OPENER.open(request, timeout=timeout) as response:
        while chunk := response.read1(65536):
            size += len(chunk)
            if size > _MAX_BYTES:
                raise ValueError(f"{url}: the answer is over {_MAX_BYTES} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def connection_file_id(arg: str, runtime_dir: str) -> str | None:
    """The kernel id of a command-line argument that is (`-f=`, `--…connection_file=`) the
    path `<runtime_dir>/kernel-<id>.json`, compared as text: a path that only leads there
    through `..` or a symlink is not it."""
    path = arg.partition("=")[2] if arg.startswith("-") else arg
    directory, _, name = path.rpartition("/")
    match = _KERNEL_FILE.fullmatch(name)
    return match[1] if match and directory == runtime_dir else None
