"""Kernels survive JupyterLab: a real jlservice, real JupyterLab, real kernels.

A crash, a hang (test_hang.py), a reload or a token rotation restarts JupyterLab; the
kernels it had keep running, with their state, and the next JupyterLab adopts them under the
same ids and sessions. A stop, a user change or survive_restarts = false ends them, as does a
grace period without adoption.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import psutil
import pytest
import websocket
from helpers.metrics import kernel_pid, metrics_section, metrics_url, scrape_text
from helpers.procs import free_port, pid_alive, wait_for

# A kernel's state that must outlive JupyterLab: a variable, an open file, a child process.
STATE = (
    "import os, subprocess\n"
    "x = 41\n"
    "kept_file = open('kept.txt', 'w')\n"
    "child = subprocess.Popen(['sleep', '600'])\n"
    "print(child.pid)"
)
# The system Python the test venv was made from (tests/run.sh): a second venv from it.
BASE_PYTHON = getattr(sys, "_base_executable", None) or "/usr/bin/python3"
# A daemon a notebook starts: its parent (a shell) exits at once, so it is an orphan of the
# supervisor's from then on, and no kernel.
DAEMON = (
    "import subprocess\n"
    "p = subprocess.Popen(['sh', '-c', 'sleep 100000 >/dev/null 2>&1 & echo $!'],"
    " stdout=subprocess.PIPE, start_new_session=True)\n"
    "print(int(p.stdout.readline())); _ = p.wait()"
)
STILL_THERE = "kept_file.write('more'); kept_file.flush(); print(x + 1, child.poll())"


def _when(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


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


def crash_and_adopt(service, kernel_id: str) -> dict:
    """kill -9 of JupyterLab; the log line of the next one's adoption of `kernel_id`."""
    lab, offset = service.lab_pid, service.log_size()
    os.kill(lab, signal.SIGKILL)
    service.wait_ready(not_pid=lab)
    return adopted(service, kernel_id, offset)


def adopted(service, kernel_id: str, offset: int) -> dict:
    """The log line of the kernel's adoption after byte `offset` of the log."""

    def line() -> dict | None:
        for event in service.log_events(offset):
            if event.get("event") == "kernel_adopted" and event.get("kernel_id") == kernel_id:
                return event
        return None

    return wait_for(line, 60, f"kernel {kernel_id} to be adopted")


def test_kill9_keeps_the_kernel_with_its_variables_files_and_children(service):
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    child = int(service.execute(token, kernel_id, STATE))
    # A daemon the notebook started (its parent exited): no kernel, so it is not kept.
    daemon = int(service.execute(token, kernel_id, DAEMON))
    assert pid_alive(daemon)
    lab, offset = service.lab_pid, service.log_size()

    os.kill(lab, signal.SIGKILL)
    service.wait_ready(not_pid=lab)
    event = adopted(service, kernel_id, offset)
    assert event["pid"] == pid and event["notebook"] == "kept.ipynb"

    assert service.execute(token, kernel_id, STILL_THERE).split() == ["42", "None"]
    assert pid_alive(pid) and pid_alive(child)
    assert not pid_alive(daemon)
    sessions = service.api("GET", "api/sessions", token).json()
    assert [(s["path"], s["kernel"]["id"]) for s in sessions] == [("kept.ipynb", kernel_id)]
    state = service.state()
    assert state["kernels"] == {"kept": 1, "adopted": 1, "waiting": 0}
    assert "1 kept across the last restart, 1 adopted" in service.cli("status").stdout


def _kill9(service, token):
    os.kill(service.lab_pid, signal.SIGKILL)


def _port(service, token):
    service.sections["lab"]["port"] = service.port = free_port()
    service.write_config()


def _options(service, token):
    service.sections["lab"].setdefault("options", {})["ServerApp.iopub_msg_rate_limit"] = 2000
    service.write_config()


def _rotate(service, token):
    rotated = service.cli("token", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    return rotated.stdout.strip()


# A hang keeps the kernel too: test_hang.py, which looks at one hang from every side.
@pytest.mark.parametrize("restart", [_kill9, _port, _options, _rotate])
def test_every_restart_keeps_the_kernel_and_its_state(service, restart):
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    child = int(service.execute(token, kernel_id, STATE))
    lab, offset = service.lab_pid, service.log_size()

    token = restart(service, token) or token
    service.wait_ready(not_pid=lab, timeout=90)
    adopted(service, kernel_id, offset)
    assert service.execute(token, kernel_id, STILL_THERE).split() == ["42", "None"]
    assert pid_alive(pid) and pid_alive(child)
    assert (service.notebooks / "kept.txt").read_text() == "more"


def test_a_stop_ends_the_kernels_also_an_adopted_one(service):
    service.start()
    token = service.cli("token").stdout.strip()
    adopted_id, adopted_pid = open_notebook(service, token, "first.ipynb")
    lab, offset = service.lab_pid, service.log_size()
    os.kill(lab, signal.SIGKILL)
    service.wait_ready(not_pid=lab)
    adopted(service, adopted_id, offset)
    _, fresh_pid = open_notebook(service, token, "second.ipynb")

    service.signal(signal.SIGTERM)
    assert service.wait_exit(timeout=30) == 0
    assert not pid_alive(adopted_pid) and not pid_alive(fresh_pid)
    assert service.leftovers() == []


def test_survive_restarts_false_ends_the_kernels_as_before(service_factory):
    service = service_factory(kernels={"survive_restarts": False})
    service.start()
    token = service.cli("token").stdout.strip()
    _, pid = open_notebook(service, token)
    lab = service.lab_pid
    os.kill(lab, signal.SIGKILL)
    service.wait_ready(not_pid=lab)
    wait_for(lambda: not pid_alive(pid), 30, "the kernel to be ended")
    assert service.api("GET", "api/sessions", token).json() == []
    assert "jlservice_kernels" not in " ".join(psutil.Process(service.lab_pid).cmdline())


@pytest.fixture(scope="session")
def not_adopted(early_service_factory) -> tuple:
    """A kept kernel the next JupyterLab cannot adopt (its connection file is broken), beside
    one it adopts, with the default [kernels] grace (30 s): set up by an early test, so that
    the grace passes while the other tests run; the service, the two kernels' ids and pids,
    and where the log was at the crash."""
    service = early_service_factory("not-adopted", metrics=metrics_section())
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    kept_id, kept_pid = open_notebook(service, token, "other.ipynb")
    for started in (kernel_id, kept_id):  # both have read their connection files
        assert service.execute(token, started, "1 + 1") == "2"
    # Ended after the grace, it ignores SIGTERM: the end takes stop_timeout (20 s).
    service.execute(token, kernel_id, "import signal; _ = signal.signal(15, signal.SIG_IGN)")
    # The next JupyterLab cannot read this kernel's connection file: its adoption fails.
    (service.root / "run" / "lab" / "runtime" / f"kernel-{kernel_id}.json").write_text("{")
    lab, offset = service.lab_pid, service.log_size()
    os.kill(lab, signal.SIGKILL)
    service.wait_ready(not_pid=lab)
    adopted(service, kept_id, offset)
    # A daemon a notebook starts under the new JupyterLab: an orphan of the supervisor's,
    # but none of the unadopted kernel's, so the end of that kernel leaves it alone.
    daemon = int(service.execute(token, kept_id, DAEMON))
    return service, (kernel_id, pid), (kept_id, kept_pid), offset, daemon


@pytest.mark.early
def test_a_kernel_the_next_jupyterlab_cannot_adopt_waits_out_the_grace(not_adopted):
    service, (_, pid), (kept_id, _), offset, _ = not_adopted
    adopted(service, kept_id, offset)
    assert pid_alive(pid), "not ended before the grace"
    assert service.state()["kernels"]["kept"] == 2


def test_a_kernel_not_adopted_is_ended_after_the_grace(not_adopted):
    """With the default grace (30 s), which has passed since the early test above ran."""
    service, (kernel_id, pid), (_, kept_pid), offset, daemon = not_adopted

    def lost() -> dict | None:
        events = service.log_events(offset)
        return next((e for e in events if e.get("event") == "kernel_lost"), None)

    event = wait_for(lost, 60, "the unadopted kernel to be given up")
    assert event["kernel_id"] == kernel_id and event["reason"] == "not_adopted"
    exited = next(e for e in service.log_events(offset) if e.get("event") == "lab_exited")
    waited = _when(event) - _when(exited)
    assert 30 <= waited < 30 + 10, f"given up {waited:.1f} s after the crash, not at the grace"
    wait_for(lambda: not pid_alive(pid), 60, "the unadopted kernel to be ended")
    assert [e for e in service.log_events(offset) if e.get("event") == "leftover_killed"]
    assert pid_alive(kept_pid) and pid_alive(service.lab_pid) and pid_alive(daemon)
    counts = {"kept": 2, "adopted": 1, "waiting": 0}
    wait_for(lambda: service.state()["kernels"] == counts, 10, "the counts published")
    metrics = scrape_text(metrics_url(service))
    assert 'jlservice_kernels_lost_total{reason="not_adopted"} 1.0' in metrics
    assert "jlservice_kernels_adopted_total 1.0" in metrics
    service.cleanup()


def test_rest_interrupt_restart_and_shutdown_of_an_adopted_kernel(service):
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    service.execute(token, kernel_id, "x = 41")
    crash_and_adopt(service, kernel_id)

    outcome: list[str] = []
    runner = threading.Thread(target=_run_long_cell, args=(service, token, kernel_id, outcome))
    runner.start()
    wait_for(lambda: _state_of(service, token, kernel_id) == "busy", 30, "the cell to run")
    assert service.api("POST", f"api/kernels/{kernel_id}/interrupt", token).status_code == 204
    runner.join(30)
    assert outcome and "KeyboardInterrupt" in outcome[0]
    assert service.execute(token, kernel_id, "x + 1") == "42"
    wait_for(lambda: _state_of(service, token, kernel_id) == "idle", 30, "idle after the cell")

    assert service.api("POST", f"api/kernels/{kernel_id}/restart", token).status_code == 200
    wait_for(lambda: not pid_alive(pid), 30, "the adopted kernel's process to end")
    assert "NameError" in _error_of(service, token, kernel_id, "x")
    new_pid = kernel_pid(service, kernel_id)
    assert new_pid != pid

    assert service.api("DELETE", f"api/kernels/{kernel_id}", token).status_code == 204
    wait_for(lambda: not pid_alive(new_pid), 30, "the kernel to end")
    assert service.api("GET", "api/kernels", token).json() == []


def test_adopted_kernels_are_culled_when_idle_and_spared_while_busy(service_factory):
    """JupyterLab's idle culling (off by default; on here, short, as an admin would turn it
    on) and activity tracking work for adopted kernels as for any: the idle one is culled,
    the one running a cell through the crash is not."""
    options = {"MappingKernelManager.cull_idle_timeout": 6, "MappingKernelManager.cull_interval": 1}
    service = service_factory(lab={"options": options})
    service.start()
    token = service.cli("token").stdout.strip()
    idle_id, idle_pid = open_notebook(service, token)
    busy_id, busy_pid = open_notebook(service, token, "busy.ipynb")

    def run_cell() -> None:  # its websocket dies with JupyterLab; the cell runs on
        with contextlib.suppress(Exception):
            service.execute(token, busy_id, "import time; time.sleep(120)", timeout=90)

    runner = threading.Thread(target=run_cell)
    runner.start()
    wait_for(lambda: _state_of(service, token, busy_id) == "busy", 30, "the cell to run")
    lab, offset = service.lab_pid, service.log_size()
    os.kill(lab, signal.SIGKILL)
    runner.join(30)
    service.wait_ready(not_pid=lab)
    adopted(service, idle_id, offset)
    adopted(service, busy_id, offset)
    model = service.api("GET", f"api/kernels/{idle_id}", token).json()
    assert model["execution_state"] == "idle", model

    wait_for(lambda: not pid_alive(idle_pid), 30, "the idle adopted kernel to be culled")

    def listed() -> dict:
        return {k["id"]: k for k in service.api("GET", "api/kernels", token).json()}

    wait_for(lambda: idle_id not in listed(), 30, "the culled kernel to leave the list")
    assert listed()[busy_id]["execution_state"] == "busy"
    assert pid_alive(busy_pid)


def test_a_shutdown_of_an_adopted_kernel_really_ends_its_process(service):
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    crash_and_adopt(service, kernel_id)
    assert service.api("DELETE", f"api/kernels/{kernel_id}", token).status_code == 204
    wait_for(lambda: not pid_alive(pid), 30, "the adopted kernel to end")
    assert service.api("GET", "api/sessions", token).json() == []


def test_two_crashes_in_a_row_and_the_kernel_that_dies_on_its_own_is_restarted(service):
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    service.execute(token, kernel_id, "x = 41")
    for _ in range(2):
        crash_and_adopt(service, kernel_id)
        assert service.execute(token, kernel_id, "x + 1") == "42"
    assert kernel_pid(service, kernel_id) == pid
    # The adopted kernel dies on its own: JupyterLab's restarter starts it again.
    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(
        lambda: (p := kernel_pid(service, kernel_id)) != pid and p, 60, "an automatic restart"
    )
    assert pid_alive(new_pid)
    assert service.execute(token, kernel_id, "1 + 1") == "2"


def test_sigkill_of_jlservice_ends_an_adopted_kernel(service):
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    crash_and_adopt(service, kernel_id)
    _, fresh = open_notebook(service, token, "fresh.ipynb")
    service.signal(signal.SIGKILL)
    service.wait_exit(timeout=5)
    wait_for(lambda: not pid_alive(pid) and not pid_alive(fresh), 30, "the kernels to end")


def test_a_kernel_writing_to_its_real_stdout_outlives_the_crash(service):
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    # A process the kernel starts on the kernel's own stdout (not ipykernel's capture).
    writer = int(
        service.execute(
            token,
            kernel_id,
            "import subprocess, sys\n"
            "out = getattr(sys.stdout, '_original_stdstream_copy', 1)\n"
            "w = subprocess.Popen(['sh', '-c', 'while :; do echo tick-$$; sleep 0.1; done'],"
            " stdout=out)\n"
            "print(w.pid)",
        )
    )
    crash_and_adopt(service, kernel_id)
    mark = service.log_size()

    def ticks() -> list[dict]:
        return [
            e
            for e in service.log_events(mark)
            if e.get("event") == "kernel_output" and f"tick-{writer}" in e.get("line", "")
        ]

    wait_for(lambda: len(ticks()) >= 5, 30, "the writer's lines in jlservice's log")
    assert pid_alive(writer) and pid_alive(pid)


def _run_long_cell(service, token, kernel_id, outcome):
    try:
        service.execute(token, kernel_id, "import time; time.sleep(120)", timeout=90)
        outcome.append("finished")
    except AssertionError as exc:
        outcome.append(str(exc))
    except (OSError, websocket.WebSocketException) as exc:  # its JupyterLab was killed
        outcome.append(f"connection lost: {exc!r}")


def _error_of(service, token, kernel_id, code) -> str:
    try:
        return service.execute(token, kernel_id, code)
    except AssertionError as exc:
        return str(exc)


def _state_of(service, token, kernel_id) -> str | None:
    response = service.api("GET", f"api/kernels/{kernel_id}", token)
    return response.json().get("execution_state") if response.ok else None


def lab_venv_without_jlservice(root: Path) -> Path:
    """A venv with JupyterLab and without jlservice: the test venv's packages, linked one by
    one, all but jlservice's (a second install of JupyterLab would cost minutes)."""
    venv = root / "labvenv"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    target = venv / "lib" / version / "site-packages"
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith("jlservice"):
            (target / entry.name).symlink_to(entry)
    python = venv / "bin" / "python"
    missing = subprocess.run([python, "-c", "import jlservice"], capture_output=True, cwd=root)
    assert missing.returncode != 0, "the lab venv must not have jlservice"
    return python


def test_jupyterlab_in_a_venv_without_jlservice_keeps_its_kernels(service_factory, tmp_path):
    python = lab_venv_without_jlservice(tmp_path)
    service = service_factory(lab={"command": [str(python), "-m", "jupyterlab"]})
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    assert psutil.Process(pid).cmdline()[0] == str(python)
    # The kernel manager's module and its directory are JupyterLab's alone.
    seen = service.execute(
        token,
        kernel_id,
        "import os, sys\n"
        "print('jlservice_kernels' in sys.modules, any('/lab/python' in p for p in sys.path),"
        " 'PYTHONPATH' in os.environ, 'JPY_PARENT_PID' in os.environ,"
        " 'JUPYTER_CONFIG_PATH' in os.environ)",
    )
    assert seen.split() == ["False", "False", "False", "False", "False"]
    service.execute(token, kernel_id, "x = 41")
    crash_and_adopt(service, kernel_id)
    assert service.execute(token, kernel_id, "x + 1") == "42"
    assert pid_alive(pid)


def test_soak_kill9_cycles_keep_every_kernel_busy_or_idle(service):
    """A cheap version of bench/kernels.py's soak: 5 crashes with 3 kernels, one busy."""
    service.start()
    token = service.cli("token").stdout.strip()
    kernels = [open_notebook(service, token, f"soak-{n}.ipynb") for n in range(3)]
    for n, (kernel_id, _) in enumerate(kernels):
        service.execute(token, kernel_id, f"x = {n}")
    busy = kernels[0][0]
    runner = threading.Thread(target=_run_long_cell, args=(service, token, busy, []), daemon=True)
    runner.start()
    wait_for(lambda: _state_of(service, token, busy) == "busy", 30, "the busy cell")
    fds, rss = [], []
    for _ in range(5):
        lab, offset = service.lab_pid, service.log_size()
        os.kill(lab, signal.SIGKILL)
        service.wait_ready(not_pid=lab)
        for kernel_id, _ in kernels:
            adopted(service, kernel_id, offset)
        supervisor = psutil.Process(service.proc.pid)
        fds.append(supervisor.num_fds())
        rss.append(supervisor.memory_info().rss)
    for n, (kernel_id, pid) in enumerate(kernels[1:], start=1):
        assert service.execute(token, kernel_id, "x") == str(n) and pid_alive(pid)
    assert pid_alive(kernels[0][1])
    assert fds[-1] <= fds[0] + 2, fds
    service.signal(signal.SIGTERM)
    assert service.wait_exit(timeout=60) == 0
    assert service.leftovers() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_user_change_ends_the_kernels(service, other_user):
    service.wait_warm = True
    service.start()
    token = service.cli("token").stdout.strip()
    _, pid = open_notebook(service, token)
    lab, offset = service.lab_pid, service.log_size()
    warm_parent = service.state()["warm_parent"]["pid"]
    service.notebooks.chmod(0o755)
    os.chown(service.notebooks, other_user.uid, other_user.gid)
    service.sections["lab"].update(user=other_user.name, allow_root=False)
    service.write_config()
    service.wait_ready(not_pid=lab, timeout=90)
    wait_for(lambda: not pid_alive(pid), 30, "the old user's kernel to be ended")
    events = [(e["event"], e.get("pid")) for e in service.log_events(offset)]
    names = [name for name, _ in events]
    assert "kernel_adopted" not in names
    # The old user's warm parent, which cannot serve the new user, is gone before the new
    # user's JupyterLab starts, not kept until it is ready.
    assert events.index(("warm_parent_retired", warm_parent)) < names.index("lab_starting")
    token = service.cli("token").stdout.strip()
    assert service.api("GET", "api/sessions", token).json() == []


def test_under_tls_a_kept_kernel_is_adopted_and_lives_on(service):
    """jlservice learns of the adoption from the pidfds the new JupyterLab holds, not from
    its API: over https (a self-signed certificate jlservice's client does not trust), or
    with a password only, that API does not answer jlservice, and every kept kernel was
    ended at the grace."""
    service.use_certificate("127.0.0.1", days=30)
    service.write_config()
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, pid = open_notebook(service, token)
    assert crash_and_adopt(service, kernel_id)["pid"] == pid
    assert service.state()["kernels"] == {"kept": 1, "adopted": 1, "waiting": 0}  # none to end
    kernels = service.api("GET", "api/kernels", token).json()
    assert [k["id"] for k in kernels] == [kernel_id] and pid_alive(pid)
