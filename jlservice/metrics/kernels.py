"""Which notebook holds a process: JupyterLab's kernels and sessions, and process ancestry.

A kernel is a process of the lab user, below the JupyterLab jlservice runs, that names its
connection file `<JUPYTER_RUNTIME_DIR>/kernel-<id>.json` on its command line; any process
started from a notebook descends from its kernel. The sessions API maps kernel ids to
notebook paths. Runs in the sampler thread: blocking calls are fine here.

JupyterLab runs as the lab user, so what it answers is read as untrusted: capped in bytes,
time and depth, and only the shapes expected are taken.
"""

from __future__ import annotations

import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil

from jlservice import bounded, listener
from jlservice.metrics.view import Endpoint

_KERNEL_FILE = re.compile(r"kernel-([0-9A-Za-z-]+)\.json")
_APP_VERSION = re.compile(r'"appVersion":\s*"([\w.+-]{1,64})"')
# The execution states a label may name; kernels are the lab user's code and could report
# a new string every time (a series each): anything else counts as "unknown".
STATES = frozenset(
    {"starting", "idle", "busy", "restarting", "autorestarting", "terminating", "dead"}
)
_MAX_DEPTH = 64  # ancestry walks stop here (pid 1 is reached long before)
_MAX_BYTES = 8 * 1024 * 1024  # of one answer: thousands of sessions fit
_MAX_SECONDS = 10.0  # for one whole answer: a trickle must not hold the sampler
# 127.0.0.1 must never go through an http_proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Kernels:
    states: dict[str, int]  # execution_state -> number of kernels
    notebooks: dict[str, str]  # kernel id -> notebook path ("" for a kernel of no session)


def fetch(endpoint: Endpoint, timeout: float, sessions: bool = True) -> Kernels | None:
    """JupyterLab's kernels and (with `sessions`) their notebooks, or None if it does not
    answer as JupyterLab does."""
    if not _ours(endpoint):
        return None
    try:
        kernels = _get(endpoint, "/kernels", timeout)
        found = _get(endpoint, "/sessions", timeout) if sessions else []
    except (OSError, ValueError):  # bounded.Malformed is a ValueError
        return None
    if not isinstance(kernels, list) or not isinstance(found, list):
        return None
    states: dict[str, int] = {"idle": 0, "busy": 0}
    notebooks = {}
    for kernel in kernels:
        if not isinstance(kernel, dict) or not isinstance(kernel.get("id"), str):
            continue
        state = kernel.get("execution_state")
        state = state if isinstance(state, str) and state in STATES else "unknown"
        states[state] = states.get(state, 0) + 1
        notebooks[kernel["id"]] = ""
    for session in found:
        if not isinstance(session, dict):
            continue
        kernel = session.get("kernel")
        kernel_id = kernel.get("id") if isinstance(kernel, dict) else None
        path = session.get("path")
        if isinstance(kernel_id, str) and kernel_id in notebooks and isinstance(path, str):
            notebooks[kernel_id] = path
    return Kernels(states, notebooks)


def lab_version(endpoint: Endpoint, timeout: float) -> str | None:
    """JupyterLab's version, from the page config its /lab page carries."""
    url = endpoint.api_url.removesuffix("api") + "lab"
    if not _ours(endpoint):
        return None
    try:
        page = _open(url, endpoint.token, timeout).decode(errors="replace")
    except (OSError, ValueError):
        return None
    match = _APP_VERSION.search(page)
    return match[1] if match else None


def _ours(endpoint: Endpoint) -> bool:
    """Whether the token may go to who listens there: jlservice's JupyterLab, not a process
    that took the port after it died."""
    address = urllib.parse.urlsplit(endpoint.api_url)
    stranger = listener.stranger(address.hostname, address.port, endpoint.pid, endpoint.uid)
    return stranger is None


def _get(endpoint: Endpoint, path: str, timeout: float) -> Any:
    # Looking must not count as activity: the server would never look idle to its cullers.
    url = f"{endpoint.api_url}{path}?no_track_activity=1"
    return bounded.loads(_open(url, endpoint.token, timeout), _MAX_BYTES)


def _open(url: str, token: str, timeout: float) -> bytes:
    """The body, at most _MAX_BYTES within _MAX_SECONDS (`timeout` for each read)."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    deadline = time.monotonic() + _MAX_SECONDS
    chunks: list[bytes] = []
    size = 0
    with _opener.open(request, timeout=timeout) as response:
        while chunk := response.read1(65536):
            size += len(chunk)
            if size > _MAX_BYTES:
                raise ValueError(f"{url}: the answer is over {_MAX_BYTES} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: the answer took over {_MAX_SECONDS} s")
            chunks.append(chunk)
    return b"".join(chunks)


def owner(pid: int, kernel_ids: dict[str, str] | set[str], lab: Endpoint) -> str | None:
    """The id of the kernel `pid` is, or descends from; None for any other process.

    Of the kernels in its ancestry, the one nearest JupyterLab counts: what a notebook
    starts cannot claim to be another notebook's kernel.
    """
    try:
        for process in reversed(_below(pid, lab.pid)):
            kernel_id = _kernel_id(process, kernel_ids, lab)
            if kernel_id is not None:
                return kernel_id
    except psutil.Error:
        return None
    return None


def _below(pid: int, lab_pid: int) -> list[psutil.Process]:
    """`pid` and its ancestors up to JupyterLab (`lab_pid`) excluded, nearest first; empty
    when `pid` does not descend from JupyterLab."""
    chain = []
    process: psutil.Process | None = psutil.Process(pid)
    for _ in range(_MAX_DEPTH):
        if process is None or process.pid <= 1:
            return []
        if process.pid == lab_pid:
            return chain
        chain.append(process)
        process = process.parent()
    return []


def _kernel_id(
    process: psutil.Process, kernel_ids: dict[str, str] | set[str], lab: Endpoint
) -> str | None:
    """The kernel `process` is: it runs as the lab user and names one of `kernel_ids`'s
    connection files in JupyterLab's runtime dir."""
    if any(uid != lab.uid for uid in process.uids()):
        return None
    for arg in process.cmdline():
        kernel_id = connection_file_id(arg, lab.runtime_dir)
        if kernel_id is not None and kernel_id in kernel_ids:
            return kernel_id
    return None


def connection_file_id(arg: str, runtime_dir: str) -> str | None:
    """The kernel id of a command-line argument that is (`-f=`, `--…connection_file=`) the
    path `<runtime_dir>/kernel-<id>.json`, compared as text: a path that only leads there
    through `..` or a symlink is not it."""
    path = arg.partition("=")[2] if arg.startswith("-") else arg
    directory, _, name = path.rpartition("/")
    match = _KERNEL_FILE.fullmatch(name)
    return match[1] if match and directory == runtime_dir else None
