"""Unsafe configurations are refused (start and reload) or warned about; public_url."""

from __future__ import annotations

import requests
from helpers.procs import wait_for
from helpers.service import render_toml

OPEN = "would let anyone who reaches port"


def test_open_access_off_loopback_is_refused_at_start(service_factory):
    svc = service_factory(lab={"ip": "0.0.0.0"}, auth={"token": False})
    result = svc.cli("run")
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "[lab] ip: 0.0.0.0 with [auth] token = false and no password_file" in lines[0]
    assert "`jlservice password`" in lines[0] and 'ip = "127.0.0.1"' in lines[0]


def test_open_access_off_loopback_is_refused_at_reload(service_factory):
    # No login at all is allowed on loopback (only this machine's users reach it)…
    svc = service_factory(auth={"token": False}).start()
    assert requests.get(svc.base + "api/contents", timeout=30).status_code == 200
    assert svc.cli("token").returncode == 1  # no token to print
    pid = svc.lab_pid
    # …but not on every interface: the reload is refused and nothing changes.
    svc.sections["lab"]["ip"] = "0.0.0.0"
    svc.write_config()
    result = svc.cli("reload")
    assert result.returncode == 78
    assert OPEN in result.stderr
    assert svc.state()["lab_pid"] == pid
    assert OPEN in svc.cli("status").stdout


def test_wildcard_allow_origin_is_warned_about(service_factory):
    svc = service_factory(lab={"options": {"ServerApp.allow_origin": "*"}}).start()
    risky = [e for e in svc.log_events() if e.get("event") == "config_risky"]
    assert len(risky) == 1
    assert "any web site a logged-in user visits" in risky[0]["problem"]
    assert "running code as" in risky[0]["problem"]


def test_public_url_is_what_token_url_prints_and_needs_no_restart(service_factory):
    svc = service_factory(lab={"base_url": "/jupyter/"}).start()
    pid = svc.lab_pid
    token = svc.cli("token").stdout.strip()
    svc.sections["lab"]["public_url"] = "https://jupyter.example.test"
    svc.write_config(render_toml(svc.sections))

    def printed():
        out = svc.cli("token", "--url").stdout.strip()
        return out if "example" in out else None

    url = wait_for(printed, 30, "the public URL in `jlservice token --url`")
    assert url == f"https://jupyter.example.test/jupyter/lab?token={token}"
    # JupyterLab never sees public_url: the reload leaves it running.
    assert svc.state()["last_reload"]["result"] == "unchanged"
    assert svc.lab_pid == pid


def test_ssh_tunnel_command(service):
    service.start()
    token = service.cli("token").stdout.strip()
    out = service.cli("token", "--ssh", "alice@gpu-box").stdout.splitlines()
    assert out == [
        f"ssh -N -L 8888:127.0.0.1:{service.port} alice@gpu-box",
        f"then open http://127.0.0.1:8888/lab?token={token}",
    ]
