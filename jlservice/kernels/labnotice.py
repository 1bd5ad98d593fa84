"""A kernel's OOM kill, told to the JupyterLab that runs, so that its open tabs show it: the
event inlab/notices.py registers, posted to JupyterLab's `POST api/events`; jlservice's
labextension shows its `message` as a notification (JupyterLab 4 cuts one at MESSAGE_MAX
characters, and renders it as text: a path's `<b>` stays `<b>`).

Off the loop: the loop only queues the event (never waiting) for one daemon thread that
posts them one after another, each connection and answer within TIMEOUT_S. A JupyterLab that
does not answer (stopped, gone, busy) misses its notifications: while one post waits, at most
QUEUED_MAX wait behind it, later ones are dropped, and the thread never keeps jlservice from
exiting.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

from jlservice import labapi, log, text
from jlservice.labapi import Endpoint
from jlservice.supervisor.events import OomKilled

logger = log.get("jlservice.kernels")

OOM_KILLED, VERSION = "https://jlservice.invalid/events/oom-killed/v1", "1"  # inlab/notices
MESSAGE_MAX = 140  # characters of a notification JupyterLab 4 shows (then "…")
TIMEOUT_S = 2.0
QUEUED_MAX = 8
_ADVICE = "Use less memory or raise [kernels] memory_max."
_ADVICE_SHARED = "Use less memory: the limit is shared with other notebooks."
_ADVICE_MACHINE = "Use less memory: the machine ran out."
_ADVICE_UNKNOWN = "Use less memory."

Post = Callable[[Endpoint, dict[str, Any], float], bool]


def event(kill: OomKilled) -> dict[str, Any]:
    """The body of POST api/events for the kill of a process of kernel `kill.kernel_id`."""
    return {
        "schema_id": OOM_KILLED,
        "version": VERSION,
        "data": {
            "kernel_id": kill.kernel_id or "",
            "notebook": kill.notebook,
            "memory_bytes": kill.memory_bytes,
            "limit_bytes": kill.limit_bytes,
            "message": message(kill),
        },
    }


def message(kill: OomKilled) -> str:
    """What the notification says, in at most MESSAGE_MAX characters: the notebook (its
    path cut at the front when it is long: the name is at its end), what the killed process
    had, the limit, what to do."""
    # The kernel log's name of it is at most 15 characters (TASK_COMM_LEN), these at most 16,
    # cut before they are escaped (an escape is never cut in two).
    what = text.escape_controls(kill.process[:16]) if kill.process else "a process"
    had = _size(kill.memory_bytes)
    if kill.limit_bytes is not None:
        had += f", limit {_size(kill.limit_bytes)}"
    if kill.own_limit is None:  # which limit ran out, only the kernel log says
        advice = _ADVICE_UNKNOWN
    elif kill.limit_bytes is None:
        advice = _ADVICE_MACHINE
    else:
        advice = _ADVICE if kill.own_limit else _ADVICE_SHARED
    rest = f": the OOM killer ended {what} ({had}). {advice}"
    whose = text.escape_controls(kill.notebook) if kill.notebook else ""
    whose = whose or f"The kernel {(kill.kernel_id or '')[:8]}"
    room = max(MESSAGE_MAX - _js_length(rest), 2)
    if _js_length(whose) > room:
        whose = "…" + whose[len(whose) - room + 1 :]
        while _js_length(whose) > room:  # characters beyond the BMP count twice
            whose = "…" + whose[2:]
    return whose + rest


def _js_length(said: str) -> int:
    """The length JupyterLab measures (JavaScript's: UTF-16 code units)."""
    return len(said.encode("utf-16-le")) // 2


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class LabNotice:
    """`endpoint()` is the JupyterLab serving now, asked at each post: a notice queued before
    a restart goes to the JupyterLab after it."""

    def __init__(
        self, endpoint: Callable[[], Endpoint | None], post: Post = labapi.post_event
    ) -> None:
        self._endpoint = endpoint
        self._post = post
        # Each event with the lab user whose kernel it tells of: none goes to the next user's.
        self._queued: queue.Queue[tuple[int, dict[str, Any]] | None] = queue.Queue(QUEUED_MAX)
        self._thread: threading.Thread | None = None
        self._closed = False

    def oom_killed(self, kill: OomKilled) -> None:
        """Tell the tabs of `kill` (a kernel's): queued, never waited for."""
        if kill.kernel_id is None:  # no kernel's: no tab to tell
            return
        if (endpoint := self._endpoint()) is None:
            logger.info("lab_notice_dropped", kernel_id=kill.kernel_id, why="JupyterLab is not up")
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="jlservice-lab-notice")
            self._thread.daemon = True
            self._thread.start()
        try:
            self._queued.put_nowait((endpoint.uid, event(kill)))
        except queue.Full:
            logger.info("lab_notice_dropped", kernel_id=kill.kernel_id, why="JupyterLab is slow")

    def _serve(self) -> None:
        while not self._closed and (asked := self._queued.get()) is not None:
            uid, body = asked
            kernel_id = body["data"]["kernel_id"]
            endpoint = self._endpoint()
            if endpoint is None or endpoint.uid != uid:
                why = "JupyterLab is not up" if endpoint is None else "the lab user changed"
                logger.info("lab_notice_dropped", kernel_id=kernel_id, why=why)
                continue
            try:
                told = self._post(endpoint, body, TIMEOUT_S)
            except Exception as exc:  # whatever it is, the notice is lost, not the thread
                told, why = False, repr(exc)
            else:
                why = "JupyterLab did not take it"
            if not told:
                logger.info("lab_notice_failed", kernel_id=kernel_id, why=why)

    def close(self) -> None:
        """Let the thread end after the post under way; what is still queued is not posted
        (jlservice is stopping). A daemon: jlservice never waits for it."""
        self._closed = True
        if self._thread is not None:
            with contextlib.suppress(queue.Full):  # full: it ends once that post returns
                self._queued.put_nowait(None)
