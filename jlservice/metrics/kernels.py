"""Which notebook holds a process: JupyterLab's kernels and sessions, and process ancestry.

A kernel process carries its connection file `kernel-<id>.json` on its command line; any
process started from a notebook descends from its kernel. The sessions API maps kernel ids
to notebook paths. Runs in the sampler thread: blocking calls are fine here.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass
from typing import Any

import psutil

from jlservice import bounded
from jlservice.metrics.view import Endpoint

_KERNEL_FILE = re.compile(r"kernel-([0-9A-Za-z-]+)\.json")
_APP_VERSION = re.compile(r'"appVersion":\s*"([^"]+)"')
_MAX_DEPTH = 64  # ancestry walks stop here (pid 1 is reached long before)
_MAX_BODY = 8 << 20  # JupyterLab runs as the lab user: its answers are capped and checked
# 127.0.0.1 must never go through an http_proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Kernels:
    states: dict[str, int]  # execution_state -> number of kernels
    notebooks: dict[str, str]  # kernel id -> notebook path ("" for a kernel of no session)


def fetch(endpoint: Endpoint, timeout: float) -> Kernels | None:
    """JupyterLab's kernels and their notebooks, or None if it does not answer."""
    try:
        kernels = _get(endpoint, "/kernels", timeout)
        sessions = _get(endpoint, "/sessions", timeout)
    except (OSError, ValueError):
        return None
    states: dict[str, int] = {"idle": 0, "busy": 0}
    notebooks = {}
    for kernel in kernels:
        state = str(kernel.get("execution_state", "unknown"))
        states[state] = states.get(state, 0) + 1
        notebooks[kernel["id"]] = ""
    for session in sessions:
        kernel_id = (session.get("kernel") or {}).get("id")
        if kernel_id in notebooks:
            notebooks[kernel_id] = str(session.get("path", ""))
    return Kernels(states, notebooks)


def lab_version(endpoint: Endpoint, timeout: float) -> str | None:
    """JupyterLab's version, from the page config its /lab page carries."""
    url = endpoint.api_url.removesuffix("api") + "lab"
    try:
        page = _open(url, endpoint.token, timeout).decode(errors="replace")
    except OSError:
        return None
    match = _APP_VERSION.search(page)
    return match[1] if match else None


def _get(endpoint: Endpoint, path: str, timeout: float) -> list[dict[str, Any]]:
    # Looking must not count as activity: the server would never look idle to its cullers.
    url = f"{endpoint.api_url}{path}?no_track_activity=1"
    return bounded.objects(bounded.loads(_open(url, endpoint.token, timeout), _MAX_BODY))


def _open(url: str, token: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with _opener.open(request, timeout=timeout) as response:
        return response.read(_MAX_BODY + 1)


def owner(pid: int, kernel_ids: dict[str, str] | set[str]) -> str | None:
    """The id of the kernel `pid` is, or descends from; None for anyone else's process."""
    try:
        process: psutil.Process | None = psutil.Process(pid)
        for _ in range(_MAX_DEPTH):
            if process is None or process.pid <= 1:
                return None
            for arg in process.cmdline():
                match = _KERNEL_FILE.search(arg)
                if match and match[1] in kernel_ids:
                    return match[1]
            process = process.parent()
    except psutil.Error:
        return None
    return None
