"""The user unit, for people without root: `install --user-unit` and `systemctl --user`."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

from helpers.procs import free_port, wait_for
from helpers.service import LabClient
from sandbox import JLSERVICE, Sandbox


def test_user_unit_runs_jupyterlab_for_its_user_without_root(sandbox: Sandbox, other_user) -> None:
    session = sandbox.user_manager(other_user)
    port = free_port()
    out = session.run(JLSERVICE, "install", "--user-unit", "--port", str(port)).stdout
    home = Path(other_user.home)
    assert f"wrote {home}/.config/jlservice/jlservice.toml" in out
    assert f"wrote {home}/.config/systemd/user/jlservice.service" in out
    assert "systemctl --user enable --now jlservice" in out
    assert "loginctl enable-linger" in out

    session.systemctl("enable", "--now", "jlservice")  # Type=notify: back once it answers
    url = session.run(JLSERVICE, "token", "--url").stdout.strip()
    token = url.rsplit("token=", 1)[1]
    assert url == f"http://127.0.0.1:{port}/lab?token={token}"
    lab = LabClient(f"http://127.0.0.1:{port}/")
    kernel = lab.api("POST", "api/kernels", token, json={"name": "python3"}).json()
    assert lab.execute(token, kernel["id"], "import os; print(os.getuid())").strip() == str(
        other_user.uid
    )
    # The state is the user's own, where `jlservice token` looks without flags.
    state = home / ".local" / "state" / "jlservice" / "state.json"
    assert state.stat().st_uid == other_user.uid
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700

    # ExecReload only sends SIGHUP; the unit is "reloading" from jlservice's RELOADING=1 until
    # its READY=1, so wait for the reload it reports rather than for the kill to return.
    session.systemctl("reload", "jlservice")
    wait_for(
        lambda: (
            session.systemctl("is-active", "jlservice", check=False).stdout.strip() == "active"
            and json.loads(state.read_text()).get("last_reload", {}).get("source") == "SIGHUP"
        ),
        30,
        "the SIGHUP reload to finish",
    )
    assert json.loads(state.read_text())["last_reload"]["result"] == "unchanged"

    # A crash restarts JupyterLab from the warm parent, inside the user unit's seccomp filter.
    def current() -> dict:
        return json.loads(state.read_text())

    wait_for(lambda: (current().get("warm_parent") or {}).get("ready"), 90, "the warm parent")
    crashed = current()["lab_pid"]
    os.kill(sandbox.host_pid(crashed), signal.SIGKILL)
    wait_for(
        lambda: current().get("status") == "ready" and current().get("lab_pid") != crashed,
        90,
        "JupyterLab again",
    )
    assert current()["started_warm"] is True
    kernel = lab.api("POST", "api/kernels", token, json={"name": "python3"}).json()
    assert lab.execute(token, kernel["id"], "import os; print(os.getuid())").strip() == str(
        other_user.uid
    )
    session.systemctl("stop", "jlservice")
    assert session.systemctl("is-active", "jlservice", check=False).stdout.strip() == "inactive"
