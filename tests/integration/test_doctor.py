"""`jlservice doctor` passes on a healthy install and finds each injected fault."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from helpers.procs import free_port, wait_for
from helpers.service import IS_ROOT, NETNS, PYTHON, render_toml

from jlservice.admin import tls


def _doctor(svc) -> tuple[int, dict[str, str]]:
    """Exit status, and each check's line by its name."""
    result = svc.cli("doctor")
    lines = result.stdout.splitlines()
    assert lines and all(line[:2] in ("✓ ", "✗ ", "- ") for line in lines), result.stdout
    by_name = {line[2:].split(":", 1)[0]: line for line in lines}
    return result.returncode, by_name


def _own_metrics_port(svc) -> None:
    """The doctor checks the exporter: a port of its own, not the default 9877, which another
    jlservice on this machine may hold (or just have let go of)."""
    svc.sections["metrics"] = metrics = {"listen": f"127.0.0.1:{free_port()}"}
    svc.write_config(svc.config_path.read_text() + render_toml({"metrics": metrics}))


def _only_failing(svc, name: str) -> dict[str, str]:
    """The doctor's lines, once it has failed (exit status 1) on the check `name` alone."""
    status, lines = _doctor(svc)
    failing = [check for check, line in lines.items() if line.startswith("✗ ")]
    assert (status, failing) == (1, [name]), lines
    return lines


def test_healthy_install_passes_and_masks_the_token(service_factory):
    svc = service_factory()
    assert svc.cli("cert").returncode == 0
    assert svc.cli("password", "--stdin", input="pw\n").returncode == 0
    svc.sections["tls"] = {"certfile": str(svc.state_dir / "tls.crt")}
    _own_metrics_port(svc)
    svc.start()
    token = svc.cli("token").stdout.strip()
    result = svc.cli("doctor")
    assert result.returncode == 0, result.stdout
    assert token not in result.stdout + result.stderr
    assert f"({token[:4]}…) logs in" in result.stdout
    _, lines = _doctor(svc)
    for name in ("config", "notebook dir", "supervisor", "port", "address", "answers", "token"):
        assert lines[name].startswith("✓ "), lines[name]
    assert "token and password required" in lines["auth"]
    assert lines["tls"].startswith("✓ ") and "127.0.0.1" in lines["tls"]


def test_port_held_by_another_process(service):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", service.port))
        holder.listen()
        status, lines = _doctor(service)
    assert status == 1
    assert lines["port"].startswith(
        f"✗ port: 127.0.0.1:{service.port} is in use by pid {os.getpid()} ("
    )
    assert "not by jlservice's JupyterLab → stop pid" in lines["port"]


def test_port_held_by_jlservice_itself_while_no_jupyterlab_runs(service_factory):
    """With survive_restarts (the default) jlservice holds JupyterLab's listening socket
    also while none runs, as after a crash or, here, between failed starts: that port is
    jlservice's own, not a stranger's, and the failed start is what the doctor blames."""
    svc = service_factory()
    script = svc.root / "crash.sh"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    svc.sections["lab"]["command"] = [str(script)]
    svc.write_config()
    svc.start(wait=False)

    def waiting(seconds: float) -> bool:  # the retries come after 0, 0.5, 1, 2, then 4 s
        events = svc.log_events()
        return any(
            e["event"] == "lab_restart_scheduled" and e["delay_s"] >= seconds for e in events
        )

    wait_for(lambda: waiting(4), 60, "a wait of 4 s between failed starts")
    status, lines = _doctor(svc)
    supervisor = svc.state()["supervisor_pid"]
    assert lines["port"] == (
        f"✓ port: 127.0.0.1:{svc.port} is held by jlservice (pid {supervisor}) for the next "
        "JupyterLab (none runs now)"
    ), lines
    assert status == 1 and lines["supervisor"].startswith("✗ supervisor: running"), lines


def test_expired_certificate(service):
    year_ago = time.time() - 365 * 86400
    cert_pem, key_pem = tls.self_signed(["127.0.0.1"], days=30, now=year_ago)
    cert, key = service.root / "old.crt", service.root / "old.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    key.chmod(0o600)
    service.sections["tls"] = {"certfile": str(cert), "keyfile": str(key)}
    service.write_config()
    status, lines = _doctor(service)
    assert status == 1
    assert lines["config"].startswith("✓ ")
    assert lines["tls"].startswith(f"✗ tls: {cert} expired on ")
    assert "`jlservice cert`" in lines["tls"]


def test_certificate_for_other_names(service):
    service.use_certificate()  # this machine's name and 127.0.0.1
    service.sections["lab"]["public_url"] = "https://jupyter.example.test/"
    service.write_config()
    _own_metrics_port(service)
    service.start()  # so that the exit status can only be this check's
    lines = _only_failing(service, "tls")
    assert lines["tls"].startswith("✗ tls: ")
    assert "browsers will ask for jupyter.example.test" in lines["tls"]
    assert "`jlservice cert --hostname jupyter.example.test`" in lines["tls"]


@pytest.mark.skipif(not IS_ROOT, reason="needs root to give the notebook dir another owner")
def test_notebook_dir_of_the_wrong_owner(service):
    os.chown(service.notebooks, 0, 0)  # made by root, never given to the lab user
    user = service.account
    status, lines = _doctor(service)
    assert status == 1
    assert lines["notebook dir"] == (
        f"✗ notebook dir: {service.notebooks} belongs to uid 0, not to {user.name} "
        f"(uid {user.uid}): notebooks could not be saved → "
        f"chown -R {user.name}: {service.notebooks}"
    )


def test_notebook_dir_inside_a_hidden_directory(service):
    hidden = service.root / ".cache" / "notebooks"
    hidden.mkdir(parents=True)
    os.chown(hidden, service.account.uid, service.account.gid)
    service.sections["lab"]["notebook_dir"] = str(hidden)
    service.write_config()
    _own_metrics_port(service)
    service.start()  # so that the exit status can only be this check's
    lines = _only_failing(service, "notebook dir")
    assert lines["notebook dir"].startswith(
        f"✗ notebook dir: {hidden} is inside the hidden directory '.cache'"
    )


def test_auth_off_on_every_interface(service):
    service.sections["lab"]["ip"] = "0.0.0.0"
    service.sections["auth"] = {"token": False}
    service.write_config()
    status, lines = _doctor(service)
    assert status == 1
    assert lines["config"].startswith("✗ config: ")
    assert "0.0.0.0 with [auth] token = false and no password_file" in lines["config"]


def test_no_login_on_loopback_fails_when_others_have_accounts(service_factory, other_user):
    """Every local account can reach loopback: without a login each could run code as the
    lab user, so the doctor does not pass it (exit status 1), served or not."""
    svc = service_factory(auth={"token": False})
    status, lines = _doctor(svc)
    assert status == 1
    assert lines["auth"].startswith(f"✗ auth: JupyterLab on 127.0.0.1:{svc.port} would serve ")
    svc.start()
    status, lines = _doctor(svc)
    assert status == 1
    auth = lines["auth"]
    assert auth.startswith(f"✗ auth: JupyterLab on 127.0.0.1:{svc.port} serves files without")
    assert "any login to every local account (" in auth
    assert f"each can run code as {svc.state()['user']}" in auth
    assert auth.endswith("→ set a password (`jlservice password`), or [auth] token = true")


@pytest.mark.skipif(not IS_ROOT, reason="needs root for a network namespace (unshare --net)")
def test_no_login_on_every_interface_is_found_live(service_factory, tmp_path):
    """The lab user's own jupyter config turns the token off: jlservice cannot see that in
    its configuration, the doctor sees it in the running server."""
    user_config = tmp_path / "user-jupyter-config"
    user_config.mkdir()
    (user_config / "jupyter_server_config.json").write_text(
        json.dumps({"IdentityProvider": {"token": ""}})
    )
    svc = service_factory(lab={"ip": "0.0.0.0", "env": {"JUPYTER_CONFIG_DIR": str(user_config)}})
    os.chown(user_config, svc.account.uid, svc.account.gid)  # the lab user's own
    svc.start(wrap=NETNS)
    in_netns = ["nsenter", f"--net=/proc/{svc.proc.pid}/ns/net"]
    result = subprocess.run(
        [*in_netns, PYTHON, "-m", "jlservice", "doctor", "--config", str(svc.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout
    auth = next(line for line in result.stdout.splitlines() if line.startswith("✗ auth: "))
    assert f"on 0.0.0.0:{svc.port} serves files without any login" in auth
    assert f"run code as {svc.state()['user']}" in auth


def test_supervisor_not_running(service):
    service.start()
    service.signal(signal.SIGTERM)
    assert service.wait_exit(timeout=60) == 0
    status, lines = _doctor(service)
    assert status == 1
    assert lines["supervisor"] == (
        "✗ supervisor: not running (last status: stopped) → systemctl start jlservice "
        "(or `jlservice run`); its log says why it stopped"
    )


def test_jupyterlab_on_an_older_address_than_configured(service_factory):
    svc = service_factory(reload={"watch": False})  # the change waits for a reload
    svc.start()
    old = svc.port
    svc.sections["lab"]["port"] = new = free_port()
    svc.write_config()
    status, lines = _doctor(svc)
    assert status == 1
    assert lines["address"] == (
        f"✗ address: JupyterLab runs on 127.0.0.1:{old}/, the configuration says "
        f"127.0.0.1:{new}/ → `jlservice reload` (and `jlservice status` for why an earlier "
        "one failed)"
    )


def test_jupyterlab_that_does_not_answer(service):
    service.start()
    lab = service.lab_pid
    os.kill(lab, signal.SIGSTOP)  # hung: jlservice replaces it within ~16 s
    try:
        status, lines = _doctor(service)
    finally:
        os.kill(lab, signal.SIGCONT)
    assert status == 1
    assert lines["answers"].startswith(f"✗ answers: GET http://127.0.0.1:{service.port}/api → ")
    assert lines["answers"].endswith("→ see jlservice's log; `jlservice status` for the last error")


def test_a_token_jupyterlab_refuses(service_factory, tmp_path):
    """The lab user's own jupyter config sets a token of its own: JupyterLab serves, but not
    to the token jlservice hands out."""
    user_config = tmp_path / "user-jupyter-config"
    user_config.mkdir()
    (user_config / "jupyter_server_config.json").write_text(
        json.dumps({"IdentityProvider": {"token": "the-users-own-token-0123456789"}})
    )
    svc = service_factory(lab={"env": {"JUPYTER_CONFIG_DIR": str(user_config)}})
    os.chown(user_config, svc.account.uid, svc.account.gid)  # the lab user's own
    svc.start()
    token = svc.cli("token").stdout.strip()
    status, lines = _doctor(svc)
    assert status == 1
    assert lines["token"] == (
        f"✗ token: the token in the state file ({token[:4]}…) is refused: 403 → check the lab "
        "user's jupyter_server_config for IdentityProvider.token; `jlservice token --rotate`"
    )
    assert token not in "".join(lines.values())
