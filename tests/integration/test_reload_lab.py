"""A reload that changes what JupyterLab sees restarts it with the new value, at once and as
the user would notice; the [service] directories cannot move under a running supervisor."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import psutil
import pytest
import requests
from helpers.procs import wait_for
from helpers.service import Service


def _reload(svc: Service) -> dict:
    """Write the configuration, `jlservice reload`, and the state once the new server is up."""
    lab = svc.lab_pid
    svc.write_config()
    done = svc.cli("reload")
    assert done.returncode == 0, done.stderr
    assert "JupyterLab restarted with the new settings" in done.stdout
    state = svc.state()  # the command returned once the new server answered
    assert state["status"] == "ready" and state["lab_pid"] not in (None, lab)
    return state


@pytest.fixture
def svc(service_factory) -> Service:
    return service_factory(reload={"watch": False}).start()  # only the reload applies it


def _umask(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:"))


def test_umask(svc):
    assert _umask(svc.lab_pid) == "0077"
    svc.sections["lab"]["umask"] = "0022"
    state = _reload(svc)
    assert _umask(state["lab_pid"]) == "0022"
    token = svc.cli("token").stdout.strip()
    kernel_id, _ = svc.start_kernel(token)
    svc.execute(token, kernel_id, "open('shared.txt', 'w').write('hi')")
    assert (svc.notebooks / "shared.txt").stat().st_mode & 0o777 == 0o644


def test_notebook_dir(svc):
    other = svc.root / "other-notebooks"
    other.mkdir()
    (other / "found.txt").write_text("here")
    account = svc.account
    os.chown(other, account.uid, account.gid)
    svc.sections["lab"]["notebook_dir"] = str(other)
    state = _reload(svc)
    assert Path(psutil.Process(state["lab_pid"]).cwd()) == other
    token = svc.cli("token").stdout.strip()
    names = [c["name"] for c in svc.api("GET", "api/contents", token).json()["content"]]
    assert names == ["found.txt"]
    assert state["notebook_dir"] == str(other)


def test_base_url(svc):
    token = svc.cli("token").stdout.strip()
    svc.sections["lab"]["base_url"] = "/jupyter/"
    _reload(svc)
    url = svc.cli("token", "--url").stdout.strip()
    assert url == f"http://127.0.0.1:{svc.port}/jupyter/lab?token={token}"
    assert requests.get(url, timeout=30).status_code == 200
    assert svc.api("GET", "api/contents", token).status_code == 200  # svc.base follows it
    old = requests.get(f"http://127.0.0.1:{svc.port}/api/contents?token={token}", timeout=30)
    assert old.status_code == 404


def test_command(svc):
    wrapper = svc.root / "jupyter-lab-wrapper"
    jupyter_lab = os.path.join(os.path.dirname(sys.executable), "jupyter-lab")  # the default
    wrapper.write_text(f'#!/bin/sh\nexport JLSTEST_WRAPPED=yes\nexec {jupyter_lab} "$@"\n')
    wrapper.chmod(0o755)
    svc.sections["lab"]["command"] = [str(wrapper)]
    state = _reload(svc)
    assert psutil.Process(state["lab_pid"]).environ()["JLSTEST_WRAPPED"] == "yes"


@pytest.mark.parametrize("key", ["state_dir", "runtime_dir"])
def test_service_directories_cannot_move_while_running(svc, key):
    lab = svc.lab_pid
    token = svc.cli("token").stdout.strip()
    svc.sections["service"][key] = str(svc.root / f"moved-{key}")
    svc.write_config()
    # SIGHUP, as `systemctl reload` sends it: `jlservice reload` would look for the state in
    # the new state_dir.
    svc.signal(signal.SIGHUP)
    state = wait_for(lambda: (s := svc.state()).get("config_error") and s, 30, "the rejection")
    assert state["config_error"] == (
        f"{svc.config_path}: [service] {key}: cannot change while jlservice runs; "
        "restart jlservice to move it"
    )
    assert state["last_reload"]["result"] == "rejected"
    assert state["status"] == "ready" and svc.lab_pid == lab
    assert svc.api("GET", "api/contents", token).status_code == 200
    assert not (svc.root / f"moved-{key}").exists()
