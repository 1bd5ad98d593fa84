"""Small pure pieces of the remote-access commands: the SSH tunnel, login URLs, metrics check."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from helpers.procs import free_port

from jlservice import config, state
from jlservice.admin.doctor.context import Context
from jlservice.admin.doctor.http import check_metrics
from jlservice.cli.token import ssh_tunnel


def _state(**changes) -> state.State:
    base = state.State(
        token="ab" * 32,
        url="https://127.0.0.1:9999/jupyter/",
        ip="0.0.0.0",
        port=9999,
        base_url="/jupyter/",
        user="alice",
        notebook_dir="/",
        config_path=None,
        supervisor_pid=None,
        supervisor_started_at=None,
        scheme="https",
    )
    return base._replace(**changes)


def test_ssh_tunnel_targets_the_listen_address() -> None:
    assert ssh_tunnel(_state(), "alice@box").splitlines() == [
        "ssh -N -L 8888:127.0.0.1:9999 alice@box",
        f"then open https://127.0.0.1:8888/jupyter/lab?token={'ab' * 32}",
    ]
    assert ssh_tunnel(_state(ip="::1"), "b").startswith("ssh -N -L 8888:[::1]:9999 b\n")


def test_login_url_without_token_login() -> None:
    assert state.login_url(_state(token_login=False)) == "https://127.0.0.1:9999/jupyter/lab"


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _doctor_context(tmp_path: Path, metrics: str, running: bool = True) -> Context:
    path = tmp_path / "jlservice.toml"
    text = f"[lab]\nallow_root = true\nnotebook_dir = {str(tmp_path)!r}\n[metrics]\n{metrics}\n"
    return Context(path, config.parse_text(text, path), None, None, None, running)


def test_metrics_check_against_a_real_server(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        listen = f'listen = "127.0.0.1:{server.server_port}"'
        result = check_metrics(_doctor_context(tmp_path, listen))
        assert result.ok is True and result.line().startswith("✓ metrics: GET http://")
    finally:
        server.shutdown()
        server.server_close()
    closed = check_metrics(_doctor_context(tmp_path, f'listen = "127.0.0.1:{free_port()}"'))
    assert closed.ok is False and "→ check [metrics] listen" in closed.line()
    off = check_metrics(_doctor_context(tmp_path, "enabled = false"))
    assert off.ok is None and "[metrics] enabled = false" in off.line()
    stopped = check_metrics(_doctor_context(tmp_path, "", running=False))
    assert stopped.ok is None and "not running" in stopped.line()


TOKEN = "f00dfeed" * 8


class _GuardedMetrics(BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        given = self.headers.get("Authorization")
        self.seen.append(given)
        self.send_response(200 if given == f"Bearer {TOKEN}" else 401)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_metrics_check_sends_the_bearer_token_to_jlservice_alone(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GuardedMetrics)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        metrics = f'listen = "127.0.0.1:{server.server_port}"\nbearer_token_file = "{token_file}"'
        ctx = _doctor_context(tmp_path, metrics)
        # This process serves the port, as the supervisor would: the token is sent.
        ours = check_metrics(ctx._replace(state=_state(supervisor_pid=os.getpid())))
        assert ours.ok is True, ours.line()
        assert "→ 200 with the bearer token, 401 without" in ours.line()
        assert _GuardedMetrics.seen == [f"Bearer {TOKEN}", None]
        # Another process holds it (jlservice could not bind): nothing is sent.
        _GuardedMetrics.seen.clear()
        squatted = check_metrics(ctx._replace(state=_state(supervisor_pid=os.getppid())))
        assert squatted.ok is False and "the bearer token was not sent" in squatted.line()
        assert _GuardedMetrics.seen == []
    finally:
        server.shutdown()
        server.server_close()
