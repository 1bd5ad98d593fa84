"""Kernels survive JupyterLab: a real jlservice, real JupyterLab, real kernels.

A crash, a hang, a reload or a token rotation restarts JupyterLab; the kernels it had keep
running, with their state, and the next JupyterLab adopts them under the same ids and
sessions. A stop, a user change or survive_restarts = false ends them, as does a grace
period without adoption.
"""

from __future__ import annotations

import contextlib
import os
import signal

import psutil
from helpers.procs import pid_alive, wait_for

# A kernel's state that must outlive JupyterLab: a variable, an open file, a child process.
STATE = (
    "import os, subprocess\n"
    "x = 41\n"
    "kept_file = open('kept.txt', 'w')\n"
    "child = subprocess.Popen(['sleep', '600'])\n"
    "print(child.pid)"
)
STILL_THERE = "kept_file.write('more'); kept_file.flush(); print(x + 1, child.poll())"


def open_notebook(service, token: str, path: str = "kept.ipynb") -> tuple[str, int]:
    """A notebook's session, as JupyterLab's front end makes it; its kernel's id and pid."""
    response = service.api(
        "POST",
        "api/sessions",
        token,
        json={"path": path, "type": "notebook", "name": "", "kernel": {"name": "python3"}},
    )
    response.raise_for_status()
    kernel_id = response.json()["kernel"]["id"]
    return kernel_id, kernel_pid(service, kernel_id)


def kernel_pid(service, kernel_id: str) -> int:
    def find() -> int | None:
        for proc in service.snapshot():
            with contextlib.suppress(psutil.Error):
                if any(f"kernel-{kernel_id}.json" in arg for arg in proc.cmdline()):
                    return proc.pid
        return None

    return wait_for(find, 30, "the kernel process")


def adopted(service, kernel_id: str, offset: int) -> dict:
    """The log line of the kernel's adoption after byte `offset` of the log."""

    def line() -> dict | None:
        for event in service.log_events(offset):
            if event.get("event") == "kernel_adopted" and event.get("kernel_id") == kernel_id:
                return event
        return None

    return wait_for(line, 60, f"kernel {kernel_id} to be adopted")


def log_size(service) -> int:
    return service.log_path.stat().st_size if service.log_path.exists() else 0


def test_kill9_keeps_the_kernel_with_its_variables_files_and_children(service):
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    child = int(service.execute(token, kernel_id, STATE))
    lab, offset = service.lab_pid, log_size(service)

    os.kill(lab, signal.SIGKILL)
    service.wait_ready(not_pid=lab)
    event = adopted(service, kernel_id, offset)
    assert event["pid"] == pid and event["notebook"] == "kept.ipynb"

    assert service.execute(token, kernel_id, STILL_THERE).split() == ["42", "None"]
    assert pid_alive(pid) and pid_alive(child)
    sessions = service.api("GET", "api/sessions", token).json()
    assert [(s["path"], s["kernel"]["id"]) for s in sessions] == [("kept.ipynb", kernel_id)]
    state = service.state()
    assert state["kernels"] == {"kept": 1, "adopted": 1, "waiting": 0}
    assert "1 kept across the last restart, 1 adopted" in service.cli("status").stdout
