"""What JupyterLab answers the sampler is read as the lab user's: capped in bytes, time and
depth, and only the shapes expected are taken. A real HTTP server plays JupyterLab."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from jlservice import labapi
from jlservice.labapi import Endpoint


class _Lab(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, bytes]]
    asked: ClassVar[list[str]]

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        self.asked.append(path)
        body = self.answers.get(path, b"[]")
        self.send_response(200)
        self.end_headers()
        try:
            while path == "/lab" and path not in self.answers:  # a byte each 0.05 s: under
                # any timeout of one read
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(body)
        except OSError:  # the sampler gave up
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def lab() -> Iterator[tuple[Endpoint, type[_Lab]]]:
    handler = type("Lab", (_Lab,), {"answers": {}, "asked": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    api = f"http://127.0.0.1:{server.server_port}/api"
    # This process plays JupyterLab: the sampler may send it the token.
    yield Endpoint(api, "token", os.getpid(), os.geteuid(), "/run/lab/runtime"), handler
    server.shutdown()
    server.server_close()


def test_kernels_and_their_notebooks(lab) -> None:
    endpoint, handler = lab
    handler.answers["/api/kernels"] = json.dumps(
        [{"id": "k1", "execution_state": "busy"}, {"id": "k2", "execution_state": "idle"}]
    ).encode()
    handler.answers["/api/sessions"] = json.dumps(
        [{"path": "a.ipynb", "kernel": {"id": "k1"}}, {"path": "gone.ipynb", "kernel": {"id": "x"}}]
    ).encode()
    found = labapi.fetch(endpoint, 2)
    assert found == labapi.Kernels({"idle": 1, "busy": 1}, {"k1": "a.ipynb", "k2": ""})


def test_without_sessions_the_notebook_paths_are_not_asked_for(lab) -> None:
    endpoint, handler = lab
    handler.answers["/api/kernels"] = b'[{"id": "k1", "execution_state": "idle"}]'
    assert labapi.fetch(endpoint, 2, sessions=False).notebooks == {"k1": ""}
    assert handler.asked == ["/api/kernels"]


def test_entries_of_other_shapes_are_left_out(lab) -> None:
    endpoint, handler = lab
    handler.answers["/api/kernels"] = json.dumps(
        [{"id": 1}, "k", None, {"id": "k1", "execution_state": ["busy"]}, {"execution_state": 1}]
    ).encode()
    handler.answers["/api/sessions"] = json.dumps(
        [
            "s",
            {"kernel": ["k1"], "path": "a"},
            {"kernel": {"id": ["k1"]}, "path": "b"},  # an unhashable id
            {"kernel": {"id": "k1"}, "path": {"p": 1}},
            {"kernel": None},
        ]
    ).encode()
    assert labapi.fetch(endpoint, 2) == labapi.Kernels(
        {"idle": 0, "busy": 0, "unknown": 1}, {"k1": ""}
    )


def test_a_notebook_path_is_a_printable_label_of_bounded_length(lab) -> None:
    """Paths come from JupyterLab (a server extension of the lab user's may answer
    anything): a lone surrogate (which no label can encode) or megabytes of path."""
    endpoint, handler = lab
    handler.answers["/api/kernels"] = b'[{"id": "k1"}, {"id": "k2"}]'
    handler.answers["/api/sessions"] = json.dumps(
        [
            {"path": "a\udcff.ipynb", "kernel": {"id": "k1"}},
            {"path": "x" * 10**6, "kernel": {"id": "k2"}},
        ]
    ).encode()
    found = labapi.fetch(endpoint, 2).notebooks
    assert found["k1"] == "a?.ipynb" and found["k1"].encode()
    assert found["k2"] == "x" * labapi.MAX_PATH


def test_states_the_lab_user_invents_are_one_unknown_series(lab) -> None:
    """Each new string would be a new series of jlservice_kernels{state}: 150,000 of them
    made scrapes of megabytes."""
    endpoint, handler = lab
    made_up = [{"id": f"k{n}", "execution_state": f"state-{n}"} for n in range(1000)]
    busy = {"id": "b", "execution_state": "busy"}
    handler.answers["/api/kernels"] = json.dumps([*made_up, busy]).encode()
    handler.answers["/api/sessions"] = b"[]"
    assert labapi.fetch(endpoint, 2).states == {"idle": 0, "busy": 1, "unknown": 1000}


@pytest.mark.parametrize(
    ("page", "version"),
    [
        (b'<script>{"appVersion": "4.6.6"}</script>', "4.6.6"),
        (b'{"appVersion": "' + b"9" * 100_000 + b'"}', None),  # a label of 100 kB
        (b'{"appVersion": "4.6\n6"}', None),
    ],
)
def test_the_jupyterlab_version_is_a_version_or_nothing(lab, page, version) -> None:
    endpoint, handler = lab
    handler.answers["/lab"] = page
    assert labapi.lab_version(endpoint, 2) == version


@pytest.mark.parametrize(
    ("kernels_body", "sessions_body"),
    [
        (b"[" * 100_000 + b"]" * 100_000, b"[]"),  # RecursionError in json
        (b"[]", b'[{"kernel": ' * 50_000 + b"1" + b"}" * 50_000 + b"]"),
        (b'{"id": "k1"}', b"[]"),  # not a list
        (b"[]", b"null"),
        (b"[" + b'{"id": "k", "execution_state": "idle"},' * 250_000 + b"{}]", b"[]"),  # 10 MB
        (b"not json", b"[]"),
    ],
)
def test_an_answer_that_is_no_list_of_kernels_is_none(lab, kernels_body, sessions_body) -> None:
    endpoint, handler = lab
    handler.answers.update({"/api/kernels": kernels_body, "/api/sessions": sessions_body})
    assert labapi.fetch(endpoint, 2) is None


def test_a_trickling_answer_ends_at_the_timeout(lab) -> None:
    endpoint, _ = lab
    began = time.monotonic()
    assert labapi.lab_version(endpoint, 0.5) is None  # its /lab page trickles
    assert time.monotonic() - began < 5


def test_a_port_someone_else_holds_gets_no_token(lab) -> None:
    endpoint, handler = lab
    other = subprocess.Popen(["sleep", "30"])  # "JupyterLab": it does not hold the port
    try:
        theirs = dataclasses.replace(endpoint, pid=other.pid)
        assert labapi.fetch(theirs, timeout=2) is None
        assert labapi.lab_version(theirs, timeout=2) is None
        assert handler.asked == []
    finally:
        other.kill()
        other.wait()
