"""Through a real nginx set up by `jlservice nginx`: login, a kernel, code over its websocket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from helpers.nginx import NGINX, Nginx
from helpers.procs import free_port, wait_for

from jlservice.admin import tls

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (tests/run.sh installs it when run as root)"
)
PASSWORD = "through the proxy"


@pytest.fixture
def nginx_factory(tmp_path) -> Iterator:
    started: list[Nginx] = []

    def make(site: str) -> Nginx:
        proxy = Nginx(tmp_path / f"nginx{len(started)}", site)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


def _site(svc, *args: str) -> str:
    result = svc.cli("nginx", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_login_kernel_and_websocket_through_nginx_with_base_url(service_factory, nginx_factory):
    port = free_port()
    public = f"http://jupyter.example.test:{port}/jupyter/"
    svc = service_factory(lab={"base_url": "/jupyter/", "public_url": public})
    assert svc.cli("password", "--stdin", input=PASSWORD + "\n").returncode == 0
    svc.start()
    proxy = nginx_factory(_site(svc, "--listen", f"127.0.0.1:{port}", "--server-name", "localhost"))
    checked = proxy.test_config()
    assert checked.returncode == 0, checked.stderr
    proxy.start(port)
    base = f"http://127.0.0.1:{port}/jupyter/"

    session = svc.login(PASSWORD, base=base)
    assert session.get(base + "api/contents", timeout=30).status_code == 200
    xsrf = {"X-XSRFToken": session.cookies["_xsrf"]}
    started = session.post(base + "api/kernels", json={"name": "python3"}, headers=xsrf, timeout=60)
    assert started.status_code == 201, started.text
    kernel_id = started.json()["id"]

    assert svc.execute(None, kernel_id, "1+1", base=base, session=session) == "2"
    # The name people type reaches JupyterLab too (public_url set: it accepts that Host).
    token = svc.cli("token").stdout.strip()
    named = requests.get(
        base + "api/status",
        headers={"Host": f"jupyter.example.test:{port}", "Authorization": f"token {token}"},
        timeout=30,
    )
    assert named.status_code == 200, named.text
    # It went through nginx, websocket upgrade included (logged once the websocket closed).
    channel = f'GET /jupyter/api/kernels/{kernel_id}/channels HTTP/1.1" 101 '
    wait_for(lambda: channel in proxy.access_log(), 30, "nginx to log the websocket")


def test_nginx_tls_with_redirect_at_root(service_factory, nginx_factory, tmp_path):
    svc = service_factory()
    assert svc.cli("password", "--stdin", input=PASSWORD + "\n").returncode == 0
    svc.start()
    token = svc.cli("token").stdout.strip()
    cert_pem, key_pem = tls.self_signed(["127.0.0.1"], days=1)
    cert, key = tmp_path / "proxy.crt", tmp_path / "proxy.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    port, http_port = free_port(), free_port()
    site = _site(
        svc,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--listen",
        f"127.0.0.1:{port}",
        "--redirect-listen",
        f"127.0.0.1:{http_port}",
    )
    proxy = nginx_factory(site)
    assert proxy.test_config().returncode == 0, proxy.test_config().stderr
    proxy.start(port)

    moved = requests.get(f"http://127.0.0.1:{http_port}/lab", allow_redirects=False, timeout=30)
    assert moved.status_code == 301
    assert moved.headers["Location"] == f"https://127.0.0.1:{port}/lab"
    base = f"https://127.0.0.1:{port}/"
    answer = requests.get(
        base + "api/status",
        verify=str(cert),
        timeout=30,
        headers={"Authorization": f"token {token}"},
    )
    assert answer.status_code == 200

    # Logging in: the browser is told to come back over https only, and the login cookie
    # it gets is never sent over plain http (JupyterLab itself sees http from nginx).
    session = requests.Session()
    form = session.get(base + "login", verify=str(cert), timeout=30)
    assert form.headers["Strict-Transport-Security"] == "max-age=31536000"
    login = session.post(
        base + "login",
        data={"password": PASSWORD, "_xsrf": session.cookies["_xsrf"]},
        verify=str(cert),
        allow_redirects=False,
        timeout=30,
    )
    assert login.status_code == 302, login.text
    assert login.headers["Strict-Transport-Security"] == "max-age=31536000"
    set_cookies = login.raw.headers.getlist("Set-Cookie")
    login_cookie = [c for c in set_cookies if c.startswith("jlservice-")]
    assert len(login_cookie) == 1, set_cookies
    attributes = [a.strip().lower() for a in login_cookie[0].split(";")]
    assert "secure" in attributes and "httponly" in attributes, login_cookie
    assert session.get(base + "api/contents", verify=str(cert), timeout=30).status_code == 200
