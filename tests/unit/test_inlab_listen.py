"""The server extension in JupyterLab (inlab/listening.py) that serves jlservice's listening
socket instead of binding the port."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket

import pytest

from jlservice.start import listening, private_dir


@pytest.fixture(scope="module")
def inlab():
    source = private_dir.KEEPING_MODULES["jlservice_listening.py"]
    spec = importlib.util.spec_from_file_location("jlservice_listening", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class HTTPServer:
    def __init__(self) -> None:
        self.added: list[socket.socket] = []

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        self.added += sockets


class ServerApp:
    """What the extension uses of jupyter_server's ServerApp (2.10 to 2.21)."""

    def __init__(self) -> None:
        self.log = logging.getLogger("test-serverapp")
        self.http_server = HTTPServer()

    def exit(self, status: int) -> None:
        raise SystemExit(status)

    def _find_http_port(self) -> None:
        raise AssertionError("it would bind a test socket: the port is in use")

    def _bind_http_server_tcp(self) -> bool:
        raise AssertionError("it would bind the port")


class OtherServerApp(ServerApp):
    _find_http_port = None  # a jupyter_server that binds some other way


@pytest.fixture
def held(monkeypatch):
    sock = socket.create_server(("127.0.0.1", 0))
    os.set_inheritable(sock.fileno(), True)  # as a cold start inherits it
    monkeypatch.setenv(listening.ENV, str(sock.fileno()))
    yield sock
    sock.close()


def test_it_serves_the_handed_socket_and_never_binds(inlab, held) -> None:
    app = ServerApp()
    inlab._load_jupyter_server_extension(app)
    assert listening.ENV not in os.environ  # kernels and terminals never see it
    assert not os.get_inheritable(held.fileno())  # nor inherit the socket
    app._find_http_port()
    assert app._bind_http_server_tcp() is True
    (served,) = app.http_server.added
    assert served.fileno() == held.fileno() and not served.getblocking()
    served.detach()  # the fixture closes it


def test_a_jupyter_server_without_the_methods_exits_saying_what_to_do(inlab, held, caplog):
    with pytest.raises(SystemExit) as exit_:
        inlab._load_jupyter_server_extension(OtherServerApp())
    assert exit_.value.code == 1
    assert "set [kernels] survive_restarts = false" in caplog.text


def test_without_a_socket_jupyterlab_binds_itself(inlab, monkeypatch) -> None:
    monkeypatch.delenv(listening.ENV, raising=False)
    app = ServerApp()
    inlab._load_jupyter_server_extension(app)
    assert "_bind_http_server_tcp" not in vars(app)


def test_it_is_a_server_extension_of_its_own_module(inlab) -> None:
    assert inlab._jupyter_server_extension_points() == [{"module": "jlservice_listening"}]
