"""nginx_conf: the server block `jlservice nginx` prints (nginx itself checks it in
tests/integration/test_nginx.py)."""

from __future__ import annotations

from jlservice.admin.nginx_conf import Site, render


def test_plain_http_with_base_url() -> None:
    text = render(Site(upstream="http://127.0.0.1:8888", base_url="/my.lab/"))
    assert "listen 80;" in text and "ssl" not in text and "return 301" not in text
    assert "    location /my.lab/ {" in text
    # The dot is escaped in the websocket location's regular expression.
    assert "location ~ ^/my\\.lab/(api/kernels/[^/]+/channels|terminals/websocket/|" in text
    assert text.count("proxy_pass http://127.0.0.1:8888;") == 2
    assert text.count("proxy_set_header Upgrade $http_upgrade;") == 2
    assert "proxy_read_timeout 1d;" in text
    assert "Strict-Transport-Security" not in text  # browsers ignore it over http anyway


def test_tls_and_redirect() -> None:
    site = Site(
        upstream="https://127.0.0.1:8888",
        base_url="/",
        server_name="jupyter.example.org",
        tls_cert="/etc/ssl/j.crt",
        tls_key="/etc/ssl/j.key",
    )
    text = render(site)
    assert "listen 443 ssl;" in text and "listen 80;" in text
    assert "return 301 https://$host$request_uri;" in text
    assert (
        "ssl_certificate /etc/ssl/j.crt;" in text and "ssl_certificate_key /etc/ssl/j.key;" in text
    )
    assert "proxy_ssl_verify off;" in text
    # https only from now on, and the login cookie marked Secure (JupyterLab sees http).
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in text
    assert "proxy_cookie_flags ~ secure;" in text
    other_port = render(site._replace(listen="127.0.0.1:8443"))
    assert "return 301 https://$host:8443$request_uri;" in other_port
