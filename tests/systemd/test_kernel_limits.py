"""[kernels] memory_max under a real systemd (the sandbox): each kernel in its own cgroup
inside the unit's delegated one, killed past its limit with the notebook named; JupyterLab
and another kernel live on; `systemctl stop` ends the kernels with the service."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import psutil
import pytest
from helpers.metrics import EMPTY_NOTEBOOK
from helpers.procs import free_port, pid_alive, wait_for
from sandbox import JLSERVICE
from test_system_unit import UNIT, Installed

from jlservice.kernels import cgroups

NOTEBOOK = 'hog dir/it\'s "big" ünïcødé.ipynb'
MIB = 2**20
LIMIT = 300 * MIB
LIMITS_DROP_IN = "[Service]\nProtectControlGroups=no\n"


@pytest.fixture
def installed(sandbox, other_user) -> Installed:
    return Installed(sandbox, other_user.name, Path(other_user.home))


def _open(installed: Installed, token: str, path: str) -> tuple[str, int]:
    file = installed.notebooks / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(EMPTY_NOTEBOOK))
    uid, gid = os.stat(installed.notebooks).st_uid, os.stat(installed.notebooks).st_gid
    for made in (file, *file.relative_to(installed.notebooks).parents):
        os.chown(installed.notebooks / made, uid, gid)
    body = {"path": path, "name": file.name, "type": "notebook", "kernel": {"name": "python3"}}
    kernel_id = installed.lab.api("POST", "api/sessions", token, json=body).json()["kernel"]["id"]

    def pid() -> int | None:
        for proc in psutil.Process(installed.lab_pid()).children():
            with contextlib.suppress(psutil.Error):
                if any(f"kernel-{kernel_id}.json" in a for a in proc.cmdline()):
                    return proc.pid
        return None

    return kernel_id, wait_for(pid, 60, "the kernel's process")


def test_a_kernel_past_memory_max_is_killed_and_named(installed) -> None:
    # The documented opt-in: the unit ships with ProtectControlGroups=yes, which makes the
    # cgroup tree read-only and limits off (tested below, in the same boot).
    installed.box.drop_in("jlservice.service", "limits", LIMITS_DROP_IN)
    metrics = f"127.0.0.1:{free_port()}"
    installed.config.write_text(
        installed.config.read_text()
        + f'\n[kernels]\nmemory_max = "{LIMIT // MIB}M"\n\n[metrics]\nlisten = "{metrics}"\n'
    )
    installed.start()
    token = installed.token()
    status = installed.box.run(JLSERVICE, "status", check=False).stdout
    state = json.loads(installed.box.run(JLSERVICE, "status", "--json").stdout)
    assert state["limits"].startswith(f"on: {LIMIT} bytes per kernel"), (state["limits"], status)
    lab = installed.lab_pid()
    hog_id, hog_pid = _open(installed, token, NOTEBOOK)
    other_id, other_pid = _open(installed, token, "other.ipynb")
    memory = cgroups.memory()
    own = memory.of(hog_pid)
    assert own.endswith(f"/jlservice.service/kernels/kernel-{hog_id}"), own
    assert memory.limit(own) == LIMIT
    assert memory.of(lab) != own and memory.of(other_pid).endswith(f"kernel-{other_id}")
    assert installed.lab.execute(token, other_id, "x = 41; print(x)").strip() == "41"

    # The kernel itself allocates past its limit: it is the one the OOM killer ends.
    def allocate() -> None:
        with contextlib.suppress(Exception):  # its websocket ends with it
            installed.lab.execute(token, hog_id, "b = b'x' * (400 << 20)", 60)

    threading.Thread(target=allocate, daemon=True).start()
    wait_for(lambda: not pid_alive(hog_pid), 60, "the OOM killer to end the kernel")
    line = wait_for(
        lambda: next(
            (t for t in installed.log_text().splitlines() if "kernel_oom_killed" in t), None
        ),
        30,
        "the kill in jlservice's log",
    )
    assert hog_id in line and f"limit_bytes={LIMIT}" in line and "ünïcødé" in line, line
    assert installed.lab_pid() == lab
    assert installed.lab.execute(token, other_id, "print(x + 1)").strip() == "42"
    state = json.loads(installed.box.run(JLSERVICE, "status", "--json").stdout)
    assert state["last_oom_kill"]["notebook"] == NOTEBOOK
    assert state["last_oom_kill"]["limit_bytes"] == LIMIT

    # The restarted kernel is placed again, in the same cgroup; a stop ends every kernel.
    new_pid = wait_for(
        lambda: next(
            (p.pid for p in psutil.Process(lab).children() if p.pid not in (hog_pid, other_pid)),
            None,
        ),
        60,
        "the restarter's new kernel",
    )
    wait_for(lambda: memory.of(new_pid) == own, 30, "the new kernel in the same cgroup")
    installed.box.systemctl("stop", UNIT)
    assert not pid_alive(other_pid) and not pid_alive(new_pid)


def test_with_the_shipped_unit_limits_are_off_and_say_why(installed) -> None:
    installed.config.write_text(installed.config.read_text() + '\n[kernels]\nmemory_max = "1G"\n')
    installed.start()
    state = json.loads(installed.box.run(JLSERVICE, "status", "--json").stdout)
    assert state["limits"].startswith("off: cannot divide"), state["limits"]
    assert "ProtectControlGroups=no" in state["limits"]
    assert "kernel_limits_off" in installed.log_text()
    doctor = installed.box.run(JLSERVICE, "doctor", check=False).stdout
    assert "kernel limits" in doctor and "ProtectControlGroups=no" in doctor, doctor


def test_a_unit_without_delegate_yes_gets_no_limits_and_says_why(installed) -> None:
    """A unit of jlservice's opened to the cgroup tree but without Delegate=yes (installed
    before it shipped, or edited): the cgroup is systemd's, and jlservice writes nothing
    into it. systemd 252 marks a delegated cgroup only in the v2 hierarchy, not in this
    machine's v1 memory one: what jlservice reads (the shipped unit's test above is on)."""
    installed.box.drop_in("jlservice.service", "limits", LIMITS_DROP_IN + "Delegate=no\n")
    installed.config.write_text(installed.config.read_text() + '\n[kernels]\nmemory_max = "1G"\n')
    installed.start()
    state = json.loads(installed.box.run(JLSERVICE, "status", "--json").stdout)
    said = state["limits"]
    assert said.startswith("off: systemd has not delegated jlservice.service's cgroup"), said
    assert "[Service] Delegate=yes" in said
    assert installed.log_text().count("kernel_limits_off") == 1
    doctor = installed.box.run(JLSERVICE, "doctor", check=False).stdout
    assert "kernel limits" in doctor and "Delegate=yes" in doctor, doctor
    memory = cgroups.memory()
    assert not (memory.dir(memory.of(installed.main_pid())) / "kernels").exists()
