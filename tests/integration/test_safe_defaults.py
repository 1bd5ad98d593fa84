"""Unsafe configurations are refused (start and reload) or warned about; public_url."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
from helpers.procs import wait_for
from helpers.service import IS_ROOT, NETNS, PYTHON, render_toml

JUPYTER_LAB = os.path.join(os.path.dirname(sys.executable), "jupyter-lab")

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


# Ways around "no login off loopback" that traitlets would honour: a setting on a base
# class of ServerApp or IdentityProvider, or the command's own arguments.
BYPASSES = {
    "Application.token": {"options": {"Application.token": ""}},
    "LoggingConfigurable.token": {"options": {"LoggingConfigurable.token": ""}},
    "Configurable.token": {"options": {"Configurable.token": ""}},
    "SingletonConfigurable.token": {"options": {"SingletonConfigurable.token": ""}},
    "NotebookApp.token": {"options": {"NotebookApp.token": ""}},
    "IdentityProvider.token": {"options": {"IdentityProvider.token": ""}},
    "JupyterApp.ip": {"options": {"JupyterApp.ip": "0.0.0.0"}},
    "ServerApp.password": {"options": {"ServerApp.password": ""}},
    "Application.disable_check_xsrf": {"options": {"Application.disable_check_xsrf": True}},
    "Application.allow_remote_access": {"options": {"Application.allow_remote_access": True}},
    "ServerApp.identity_provider_class": {
        "options": {"ServerApp.identity_provider_class": "my.Anyone"}
    },
    "ServerApp.tornado_settings": {
        "options": {"ServerApp.tornado_settings": {"xsrf_cookies": False}}
    },
    "IdentityProvider.cookie_options": {
        "options": {"IdentityProvider.cookie_options": {"secure": False}}
    },
    "command --ServerApp.token=": {"command": [JUPYTER_LAB, "--ServerApp.token="]},
    "command -Application.token=": {"command": [JUPYTER_LAB, "-Application.token="]},
    "command --NotebookApp.token": {"command": [JUPYTER_LAB, "--NotebookApp.token", "x"]},
    "command --ip": {"command": [JUPYTER_LAB, "--ip=0.0.0.0"]},
    "command --port": {"command": [JUPYTER_LAB, "--port", "80"]},
    "command --allow-r": {"command": [JUPYTER_LAB, "--allow-r"]},
    "command --config": {"command": [JUPYTER_LAB, "--config=/tmp/open.py"]},
    "command --certfile": {"command": [JUPYTER_LAB, "--certfile=/tmp/c.pem"]},
    "command sh -c": {"command": ["/bin/sh", "-c", f'exec {JUPYTER_LAB} --ServerApp.token= "$@"']},
}


@pytest.mark.parametrize("lab", BYPASSES.values(), ids=BYPASSES.keys())
def test_managed_settings_are_refused_by_check_config(service_factory, lab):
    svc = service_factory(lab={**lab, "ip": "0.0.0.0"})
    result = svc.cli("check-config")
    assert result.returncode == 78, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    if "options" in lab:
        key = next(iter(lab["options"]))
        assert f'[lab] options."{key}": is managed by jlservice; use ' in lines[0]
    else:
        assert "[lab] command: " in lines[0] and "which is managed by jlservice; use " in lines[0]


def test_harmless_command_arguments_pass(service_factory):
    svc = service_factory(lab={"command": [JUPYTER_LAB, "--no-browser", "-y"]})
    assert svc.cli("check-config").returncode == 0


def _anonymous_contents(svc) -> int | str:
    """GET api/contents without credentials, from inside the service's network namespace."""
    code = (
        "import urllib.request, urllib.error, sys\n"
        "try: print(urllib.request.urlopen(sys.argv[1], timeout=30).status)\n"
        "except urllib.error.HTTPError as e: print(e.code)\n"
    )
    result = subprocess.run(
        [
            "nsenter",
            f"--net=/proc/{svc.proc.pid}/ns/net",
            PYTHON,
            "-c",
            code,
            svc.base + "api/contents",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return int(result.stdout) if result.stdout.strip().isdigit() else result.stderr


@pytest.mark.skipif(not IS_ROOT, reason="needs root for a network namespace (unshare --net)")
def test_token_emptied_on_a_base_class_is_refused_at_start(service_factory):
    """The reproduction: every interface, and "Application.token" = "" (which traitlets
    applies to ServerApp). Run in a network namespace: if jlservice let it start, the
    tokenless JupyterLab must not be reachable from this machine's real network."""
    svc = service_factory(lab={"ip": "0.0.0.0", "options": {"Application.token": ""}})
    svc.start(wait=False, wrap=NETNS)

    def refused_or_ready() -> bool:
        return svc.proc.poll() is not None or svc.state().get("status") == "ready"

    wait_for(refused_or_ready, 90, "jlservice to refuse the configuration, or to serve")
    if svc.proc.poll() is None:
        pytest.fail(
            "jlservice started JupyterLab on 0.0.0.0 with Application.token = '': "
            f"GET api/contents without credentials → {_anonymous_contents(svc)}"
        )
    assert svc.proc.returncode == 78
    assert '[lab] options."Application.token": is managed by jlservice' in svc.log_text()


def test_no_proxy_for_a_server_without_login(service_factory):
    svc = service_factory(auth={"token": False})
    result = svc.cli("nginx", "--server-name", "jupyter.example.test")
    assert result.returncode == 78
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "JupyterLab has no login ([auth] token = false and no password_file)" in lines[0]
    assert "a proxy would let anyone who reaches it run code as" in lines[0]


def test_no_login_on_loopback_is_warned_about_when_others_have_accounts(
    service_factory, other_user
):
    svc = service_factory(auth={"token": False}).start()

    def warnings() -> list[dict]:
        return [e for e in svc.log_events() if e.get("event") == "open_to_local_users"]

    assert len(warnings()) == 1, warnings()
    first = warnings()[0]
    assert first["level"] == "warning"
    assert "every local account (" in first["problem"]  # other_user's, at least
    assert f"can reach JupyterLab on 127.0.0.1:{svc.port} and run code as" in first["problem"]
    # Said again at each reload: here the file watch's, of a setting JupyterLab never sees
    # (no `jlservice reload` as well: whether the watch's reload came before it is a race).
    svc.sections["health"] = {"interval": 4}
    svc.write_config()
    wait_for(lambda: len(warnings()) == 2, 30, "the warning again after the reload")


def test_wildcard_allow_origin_is_warned_about(service_factory):
    svc = service_factory(lab={"options": {"ServerApp.allow_origin": "*"}}).start()
    risky = [e for e in svc.log_events() if e.get("event") == "config_risky"]
    assert len(risky) == 1
    assert "any web site a logged-in user visits" in risky[0]["problem"]
    assert "running code as" in risky[0]["problem"]


def test_public_url_is_what_token_url_prints_and_needs_no_restart(service_factory):
    public = {"base_url": "/jupyter/", "public_url": "https://old.example.test"}
    svc = service_factory(lab=public).start()
    pid = svc.lab_pid
    token = svc.cli("token").stdout.strip()
    svc.sections["lab"]["public_url"] = "https://jupyter.example.test"
    svc.write_config(render_toml(svc.sections))

    def printed():
        out = svc.cli("token", "--url").stdout.strip()
        return out if "jupyter.example" in out else None

    url = wait_for(printed, 30, "the public URL in `jlservice token --url`")
    assert url == f"https://jupyter.example.test/jupyter/lab?token={token}"
    # JupyterLab sees only that there is a public_url: the reload leaves it running.
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
