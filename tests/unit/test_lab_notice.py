"""A kernel's OOM kill told to JupyterLab's tabs (kernels.labnotice): the event's shape, as
jupyter_server's api/events takes it with the schema inlab/notices registers; what the
notification says; the POST, off the loop and bounded."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from helpers import tls_server
from jupyter_events import EventLogger
from jupyter_server.services.events.handlers import validate_model

from jlservice import labapi
from jlservice.inlab import notices
from jlservice.kernels import labnotice
from jlservice.labapi import Endpoint
from jlservice.start import launcher
from jlservice.supervisor.events import OomKilled

K = "3f1c2a9e-6b1d-4c57-9d0e-8a1b2c3d4e5f"
MIB = 2**20


def _kill(
    notebook: str = "work/train.ipynb", limit: int | None = 300 * MIB, own: bool | None = True
) -> OomKilled:
    return OomKilled(4242, "python3", K, notebook, 312 * MIB, 2 << 30, limit, "/svc", own)


def test_the_event_is_what_jupyter_servers_api_events_takes() -> None:
    """The body passes jupyter_server's own check of a posted event and the schema the
    server extension registers (jupyter_events validates the data against it)."""
    events = EventLogger()
    events.register_event_schema(notices.OOM_KILLED_SCHEMA)
    for kill in (_kill(), _kill("", None)):
        body = labnotice.event(kill)
        validate_model(body, events.schemas)
        events.schemas.validate_event(body["schema_id"], body["data"])
        data = body["data"]
        assert (data["kernel_id"], data["notebook"]) == (K, kill.notebook)
        assert (data["memory_bytes"], data["limit_bytes"]) == (312 * MIB, kill.limit_bytes)
    assert (labnotice.OOM_KILLED, labnotice.VERSION) == (notices.OOM_KILLED, "1")


def test_the_message_names_the_notebook_what_it_had_the_limit_and_what_to_do() -> None:
    assert labnotice.message(_kill()) == (
        "work/train.ipynb: the OOM killer ended python3 (312 MiB, limit 300 MiB). "
        "Use less memory or raise [kernels] memory_max."
    )
    assert labnotice.message(_kill(own=False)).endswith(  # the service's, a container's
        "(312 MiB, limit 300 MiB). Use less memory: the limit is shared with other notebooks."
    )
    assert labnotice.message(_kill(limit=None)).endswith(
        "(312 MiB). Use less memory: the machine ran out."
    )
    assert labnotice.message(_kill(own=None)).endswith(  # only the kernel's cgroup counted it
        "(312 MiB, limit 300 MiB). Use less memory."
    )
    assert labnotice.message(_kill("")).startswith("The kernel 3f1c2a9e: the OOM killer")


def test_a_long_or_hostile_path_keeps_its_name_within_what_jupyterlab_shows() -> None:
    """JupyterLab cuts a notification at 140 characters: a long path loses its front, never
    its name or the advice; control characters (a fake second line) are escaped."""
    deep = "/".join(["a-long-directory-name"] * 10) + "/ünïcødé <b>x</b>.ipynb"
    said = labnotice.message(_kill(deep))
    assert len(said) <= labnotice.MESSAGE_MAX
    assert said.startswith("…") and "ünïcødé <b>x</b>.ipynb: the OOM killer" in said
    assert said.endswith("raise [kernels] memory_max.")
    said = labnotice.message(_kill("🐍" * 100 + ".ipynb"))  # JavaScript counts each twice
    assert len(said.encode("utf-16-le")) // 2 <= labnotice.MESSAGE_MAX
    assert said.startswith("…🐍") and said.endswith("raise [kernels] memory_max.")
    said = labnotice.message(_kill("a\nKernel restarted.\x1b[2J.ipynb"))
    assert said.startswith("a\\nKernel restarted.\\x1b[2J.ipynb: ")
    hostile = dataclasses.replace(_kill(), process="\x1b" * 15)  # the kernel log's at most
    said = labnotice.message(hostile)
    assert "ended " + "\\x1b" * 15 + " (" in said and said.endswith("memory_max.")


def test_the_loop_never_waits_and_a_slow_lab_misses_what_does_not_fit() -> None:
    """While JupyterLab does not answer, oom_killed returns at once; QUEUED_MAX notices wait
    behind the one being posted, later ones are dropped; each goes to the JupyterLab serving
    when it is posted; close() ends the thread after the post under way, queue full or not."""
    release, first = threading.Event(), threading.Event()
    posted: list[tuple[Endpoint, dict]] = []

    def post(endpoint: Endpoint, body: dict, timeout: float) -> bool:
        assert timeout == labnotice.TIMEOUT_S
        posted.append((endpoint, body))
        first.set()
        return release.wait(30)

    serving = [Endpoint("http://127.0.0.1:1/api", "t", 1, 0, "/")]
    notice = labnotice.LabNotice(lambda: serving[0], post)
    notice.oom_killed(_kill())
    assert first.wait(30)
    for _ in range(labnotice.QUEUED_MAX + 3):
        notice.oom_killed(_kill())
    assert len(posted) == 1
    serving[0] = Endpoint("http://127.0.0.1:2/api", "t2", 2, 0, "/")  # restarted meanwhile
    release.set()
    wait_until(lambda: len(posted) == 1 + labnotice.QUEUED_MAX)
    assert {e.token for e, _ in posted[1:]} == {"t2"}

    release.clear()
    first.clear()
    notice.oom_killed(_kill())
    assert first.wait(30)
    for _ in range(labnotice.QUEUED_MAX):
        notice.oom_killed(_kill())  # the queue is full again
    notice.close()
    release.set()
    notice._thread.join(30)
    assert not notice._thread.is_alive()
    assert len(posted) == 2 + labnotice.QUEUED_MAX  # the post under way, none queued after


def test_no_jupyterlab_serving_or_another_users_drops_the_notice() -> None:
    """Queued for one lab user's JupyterLab, never posted to the next user's (a reload that
    changed [lab] user meanwhile): their notebook's path is not the next user's to see."""
    release = threading.Event()
    asked: list[dict] = []

    def post(_endpoint: Endpoint, body: dict, _timeout: float) -> bool:
        asked.append(body)
        return release.wait(30)

    serving: list[Endpoint | None] = [None]
    notice = labnotice.LabNotice(lambda: serving[0], post)
    notice.oom_killed(_kill("none.ipynb"))  # no JupyterLab: dropped at once
    serving[0] = Endpoint("http://127.0.0.1:1/api", "t", 1, 1000, "/")
    notice.oom_killed(_kill("a.ipynb"))
    wait_until(lambda: len(asked) == 1)
    notice.oom_killed(_kill("a-secret.ipynb"))  # queued for uid 1000's JupyterLab
    serving[0] = Endpoint("http://127.0.0.1:2/api", "t2", 2, 1001, "/")
    notice.oom_killed(_kill("b.ipynb"))
    release.set()
    wait_until(lambda: len(asked) == 2)
    notice.close()
    assert [b["data"]["notebook"] for b in asked] == ["a.ipynb", "b.ipynb"]


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class _Lab(BaseHTTPRequestHandler):
    status: ClassVar[int]
    asked: ClassVar[list[tuple[str, str | None, bytes]]]

    location: ClassVar[str] = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.asked.append((self.path, self.headers["Authorization"], body))
        self.send_response(self.status)
        if self.location:
            self.send_header("Location", self.location)
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _serving(
    context: ssl.SSLContext | None = None,
) -> Iterator[tuple[Endpoint, type[_Lab]]]:
    """A JupyterLab played by this process (the token may go to it)."""
    handler = type("Lab", (_Lab,), {"status": 204, "asked": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    scheme = "https" if context else "http"
    url = f"{scheme}://127.0.0.1:{server.server_port}/api"
    try:
        yield Endpoint(url, "tok", os.getpid(), os.geteuid(), "/"), handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def lab() -> Iterator[tuple[Endpoint, type[_Lab]]]:
    with _serving() as served:
        yield served


def test_the_event_is_posted_to_api_events_with_the_token(lab) -> None:
    endpoint, handler = lab
    body = labnotice.event(_kill())
    assert labapi.post_event(endpoint, body, 5)
    ((path, auth, sent),) = handler.asked
    assert path == "/api/events?no_track_activity=1"  # not activity: the cullers still see idle
    assert auth == "token tok" and json.loads(sent) == body
    handler.status = 400  # say, a JupyterLab without the schema
    assert not labapi.post_event(endpoint, body, 5)


def test_a_lab_that_never_answers_costs_the_post_its_timeout() -> None:
    """Connected (the listen backlog takes it) but never answered: the post gives up."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        endpoint = Endpoint(f"http://127.0.0.1:{port}/api", "tok", os.getpid(), os.geteuid(), "/")
        done: list[bool] = []
        post = threading.Thread(
            target=lambda: done.append(labapi.post_event(endpoint, {"x": 1}, 0.2)), daemon=True
        )
        post.start()
        post.join(30)
        assert done == [False]


def test_a_stranger_on_the_port_gets_nothing(lab) -> None:
    """A process that took JupyterLab's port after it died is not sent the token."""
    endpoint, handler = lab
    with subprocess.Popen(["sleep", "60"]) as died_and_gone:  # JupyterLab's pid, say
        stranger = dataclasses.replace(endpoint, pid=died_and_gone.pid)
        assert not labapi.post_event(stranger, labnotice.event(_kill()), 5)
        died_and_gone.kill()
    assert handler.asked == []


def test_a_redirect_is_never_followed_with_the_token(lab) -> None:
    """The lab user's JupyterLab answers 302 elsewhere: root does not go there (with the
    token, after reading the whole body), and the notice counts as not taken."""
    endpoint, handler = lab
    with _serving() as (_elsewhere, elsewhere):
        handler.status, handler.location = 302, _elsewhere.api_url + "/stolen"
        assert not labapi.post_event(endpoint, labnotice.event(_kill()), 5)
        assert labapi.fetch(endpoint, 5) is None  # the sampler's GETs neither
        assert elsewhere.asked == []
    assert len(handler.asked) == 2


def test_a_jupyterlab_over_tls_is_told_too(tmp_path) -> None:
    """[tls]: JupyterLab's own certificate, whose names need not include 127.0.0.1."""
    with _serving(tls_server.server_context(tmp_path)) as (endpoint, handler):
        assert labapi.post_event(endpoint, labnotice.event(_kill()), 5)
        assert len(handler.asked) == 1


def test_the_front_end_listens_for_the_event_jlservice_posts() -> None:
    built = launcher.LABEXTENSIONS / "labextensions" / "jlservice" / "static"
    code = "".join(p.read_text() for p in built.glob("*.js"))
    assert labnotice.OOM_KILLED in code
