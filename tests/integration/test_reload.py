"""Live configuration: file edits, SIGHUP and `jlservice reload` do the least a change needs."""

from __future__ import annotations

import datetime
import itertools
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from helpers.procs import free_port, pid_alive, wait_for
from helpers.service import WARM_AND_COLD, WARM_ONLY, render_toml

# WARM_AND_COLD: the tests that restart JupyterLab, which a warm or a cold start then
# serves; the others, where only the first (always cold) start happens, run with the default.
# Where a test also varies how the change arrives (how the file is saved, SIGHUP or the
# command), that is noticed before anything starts: each way runs once, and the start
# strategies are shared out among them (WARM_AND_COLD's warm with its parent waited for).
# WARM_ONLY: what is checked happens before the restart (the watcher's debounce, the idle
# policy's wait), and the restart is a plain one, as in the tests above.


def _events(svc, name):
    return [e for e in svc.log_events() if e.get("event") == name]


def _wait_reload(svc, count, timeout=30):
    return wait_for(
        lambda: len(_events(svc, "config_reloaded") + _events(svc, "config_rejected")) >= count,
        timeout,
        f"{count} reload(s)",
    )


def save_in_place(path, text):
    with open(path, "r+") as f:  # truncate and write: the inode stays
        f.truncate(0)
        f.write(text)


def save_by_rename(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_with_sed(path, text, old_port, new_port):
    subprocess.run(
        ["sed", "-i", f"s/^port = {old_port}$/port = {new_port}/", str(path)], check=True
    )
    assert path.read_text() == text


def test_comment_edit_restarts_nothing(service):
    service.start()
    token = service.cli("token").stdout.strip()
    _, kernel_pid = service.start_kernel(token)
    lab = service.lab_pid
    service.config_path.write_text("# just a comment\n" + service.config_path.read_text())
    _wait_reload(service, 1)
    assert _events(service, "config_reloaded")[-1]["result"] == "unchanged"
    assert service.state()["last_reload"]["result"] == "unchanged"
    assert service.lab_pid == lab and pid_alive(lab)
    assert pid_alive(kernel_pid)
    assert len(_events(service, "lab_starting")) == 1


@pytest.mark.parametrize(
    ("warm", "style"),
    [(True, "in_place"), (False, "rename"), (True, "sed")],
    ids=["warm-in_place", "cold-rename", "warm-sed"],
    indirect=["warm"],
)
def test_port_change_moves_server_and_keeps_login(service, style, warm):
    service.start()
    token = service.cli("token").stdout.strip()
    browser = requests.Session()
    assert service.api("GET", f"lab?token={token}", session=browser).status_code == 200
    old_port, new_port, lab = service.port, free_port(), service.lab_pid

    service.sections["lab"]["port"] = new_port
    text = render_toml(service.sections)
    if style == "in_place":
        save_in_place(service.config_path, text)
    elif style == "rename":
        save_by_rename(service.config_path, text)
    else:
        save_with_sed(service.config_path, text, old_port, new_port)

    state = service.wait_ready(not_pid=lab)
    service.port = new_port
    assert state["port"] == new_port and state["started_warm"] is warm
    assert service.api("GET", "api").status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{old_port}/api", timeout=5)
    assert service.cli("token", "--url").stdout.strip() == (
        f"http://127.0.0.1:{new_port}/lab?token={token}"
    )
    assert service.cli("token").stdout.strip() == token
    # The browser logged in on the old port is still logged in on the new one.
    assert service.api("GET", "api/contents", session=browser).status_code == 200
    assert state["restarts"] == 1 and state["last_reload"]["result"] == "applied"


def test_supervisor_only_setting_applies_live(service):
    service.start()
    lab = service.lab_pid
    service.sections["log"]["format"] = "console"
    service.sections.setdefault("restart", {})["max_failures"] = 9
    service.write_config()
    wait_for(lambda: service.state().get("last_reload"), 30, "the reload")
    assert service.state()["last_reload"]["result"] == "unchanged"
    service.api("GET", "api/contents")  # JupyterLab logs a 403 warning: in the new format
    wait_for(lambda: "403 GET /api/contents" in service.log_text(), 10, "the next log line")
    last = service.log_text().strip().splitlines()[-1]
    assert not last.startswith("{") and "lab_output" in last
    assert service.lab_pid == lab


def test_invalid_file_keeps_serving_and_fix_clears(service):
    service.start()
    token = service.cli("token").stdout.strip()
    lab = service.lab_pid
    good = service.config_path.read_text()

    service.config_path.write_text(good.replace(f"port = {service.port}", "port = 99999"))
    _wait_reload(service, 1)
    state = service.state()
    assert "[lab] port: 99999 is not a port" in state["config_error"]
    assert state["status"] == "ready" and state["lab_pid"] == lab
    assert service.api("GET", "api/contents", token).status_code == 200
    status = service.cli("status").stdout
    assert "config error" in status and "[lab] port" in status
    assert _events(service, "config_rejected")[-1]["level"] == "error"

    service.config_path.unlink()  # deleted: an error like any other
    _wait_reload(service, 2)
    assert "no such file" in service.state()["config_error"]
    assert service.api("GET", "api/contents", token).status_code == 200

    service.config_path.write_text(good)
    _wait_reload(service, 3)
    assert service.state()["config_error"] is None
    assert "config error" not in service.cli("status").stdout
    assert service.lab_pid == lab


def _settled(svc) -> None:
    """Once the supervisor has handled what the file watcher posted (its debounce fires
    within 0.2 s of the last save): a reload asked for now is handled after it."""
    done = svc.cli("reload")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: _events(svc, "config_reloaded")[-1]["source"] == "SIGHUP", 30, "SIGHUP")


@WARM_ONLY
def test_burst_of_saves_restarts_once(service):
    service.start()
    lab = service.lab_pid
    texts = []
    for port in [free_port() for _ in range(10)]:
        service.sections["lab"]["port"] = port
        texts.append(render_toml(service.sections))
    saved = []
    for text in texts:  # ten saves, as fast as they go
        save_by_rename(service.config_path, text)
        saved.append(time.monotonic())
    state = service.wait_ready(not_pid=lab)
    _settled(service)
    # One detection per pause of the debounce's 0.2 s between saves (none, unless this
    # machine stalled the test), and the newest content is what runs.
    pauses = sum(b - a >= 0.2 for a, b in itertools.pairwise(saved))
    assert len(_events(service, "config_change_detected")) == 1 + pauses
    assert len(_events(service, "lab_starting")) == 2 + pauses
    assert service.state()["port"] == state["port"] == service.sections["lab"]["port"]


@pytest.mark.parametrize(
    ("warm", "trigger"),
    [(True, "SIGHUP"), (False, "jlservice reload")],
    ids=["warm-SIGHUP", "cold-jlservice reload"],
    indirect=["warm"],
)
def test_sighup_and_reload_command_with_notify_handshake(service_factory, trigger, notify_socket):
    svc = service_factory(reload={"watch": False})
    sock = notify_socket
    svc.start(env={"NOTIFY_SOCKET": sock.path})
    sock.read_until(lambda m: m.get("READY") == "1", timeout=30)

    def reload(result: str, code: int, says: str) -> dict[str, str]:
        """Reload; check what it did (`result`) and, from the command, its exit status and
        what it said; returns the READY=1 that closed the RELOADING=1 … READY=1 handshake."""
        asked = time.time()
        if trigger == "SIGHUP":
            svc.signal(signal.SIGHUP)
        else:
            done = svc.cli("reload")
            assert (done.returncode, says in done.stdout + done.stderr) == (code, True), done
        before = sock.read_until(lambda m: m.get("RELOADING") == "1", timeout=60)
        usec = int(before["MONOTONIC_USEC"])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60e6
        after = sock.read_until(lambda m: m.get("READY") == "1", timeout=60)
        last = svc.state()["last_reload"]
        assert (last["source"], last["result"]) == ("SIGHUP", result) and last["at"] >= asked
        return after

    # 1. nothing changed
    lab = svc.lab_pid
    after = reload("unchanged", 0, "kept running")
    assert "JupyterLab ready" in after["STATUS"] and svc.lab_pid == lab

    # 2. an invalid file: rejected, still ready, and the error names the key
    svc.sections["log"]["level"] = "loud"
    svc.write_config()
    after = reload("rejected", 78, "[log] level")
    assert "configuration rejected" in after["STATUS"] and svc.lab_pid == lab
    assert "[log] level" in after["STATUS"]

    # 3. a port change: restarted, READY=1 once the new server answers
    svc.sections["log"]["level"] = "debug"
    new_port = free_port()
    svc.sections["lab"]["port"] = new_port
    svc.write_config()
    after = reload("applied", 0, "restarted")
    assert f":{new_port}/" in after["STATUS"]
    assert requests.get(f"http://127.0.0.1:{new_port}/api", timeout=10).status_code == 200
    assert svc.state()["config_error"] is None


def test_reload_of_a_file_that_is_not_toml_names_the_problem(service_factory):
    """The command cannot even find the running supervisor's state in it: it says what is
    wrong without disturbing the server."""
    svc = service_factory(reload={"watch": False})
    svc.start()
    lab = svc.lab_pid
    svc.config_path.write_text("[lab\n")
    broken = svc.cli("reload")
    assert broken.returncode == 78 and "invalid TOML" in broken.stderr
    assert svc.lab_pid == lab and svc.state()["last_reload"] is None


def test_reload_without_a_running_supervisor_says_so(service):
    result = service.cli("reload")
    assert result.returncode == 1  # no state file: jlservice never ran with this config
    assert "no state" in result.stderr
    service.start()
    service.signal(signal.SIGTERM)
    assert service.wait_exit(timeout=60) == 0
    result = service.cli("reload")
    assert result.returncode == 3  # LSB: not running
    assert "jlservice is not running" in result.stderr


def test_a_reload_after_the_file_watch_applied_the_edit_says_jupyterlab_restarted(
    service_factory, tmp_path
):
    """People edit, then run `jlservice reload` out of habit: the file watch may have
    applied the file already, restarting JupyterLab. The command then has nothing left to
    change, but must not say JupyterLab "kept running": it waits until it serves again."""
    # A JupyterLab that takes 5 s to start (a wrapper that waits, then execs it; cold, as
    # a shell wrapper is): the command surely comes while the watch's restart is under way.
    wrapper = tmp_path / "slow-jupyter-lab"
    jupyter_lab = os.path.join(os.path.dirname(sys.executable), "jupyter-lab")
    wrapper.write_text(f'#!/bin/sh\nsleep 5\nexec {jupyter_lab} "$@"\n')
    wrapper.chmod(0o755)
    svc = service_factory(lab={"command": [str(wrapper)]}).start()
    old, offset = svc.lab_pid, svc.log_size()
    svc.sections["lab"]["port"] = svc.port = free_port()
    svc.write_config()

    def watch_applied() -> bool:
        return any(
            e.get("event") == "config_reloaded" and e.get("source") == "file"
            for e in svc.log_events(offset)
        )

    wait_for(watch_applied, 30, "the file watch's reload")
    done = svc.cli("reload")
    assert done.returncode == 0, done.stderr
    assert "JupyterLab restarted meanwhile and serves these settings" in done.stdout, done.stdout
    state = svc.state()
    assert state["status"] == "ready" and state["lab_pid"] not in (None, old)
    assert state["last_reload"]["result"] == "unchanged"
    assert requests.get(f"{svc.base}api", timeout=10).status_code == 200  # the new port


@WARM_ONLY
def test_idle_policy_waits_for_busy_kernel(service_factory):
    svc = service_factory(reload={"when": "idle"})
    svc.start()
    token = svc.cli("token").stdout.strip()
    kernel_id, _ = svc.start_kernel(token)
    lab = svc.lab_pid
    finish = svc.notebooks / "finish"  # the kernel is busy until the test has seen enough
    code = f"import os, time\nwhile not os.path.exists({str(finish)!r}): time.sleep(0.05)"
    worker = threading.Thread(target=svc.execute, args=(token, kernel_id, code))
    worker.start()
    wait_for(
        lambda: any(
            k["execution_state"] == "busy" for k in svc.api("GET", "api/kernels", token).json()
        ),
        30,
        "a busy kernel",
    )
    svc.sections["lab"]["port"] = free_port()
    svc.write_config()
    first = wait_for(lambda: _busy_pending(svc), 30, "the pending reload")
    assert "busy kernel" in svc.cli("status").stdout
    # The next probe (each second) finds it busy still, and JupyterLab was left alone.
    wait_for(lambda: _busy_pending(svc) not in (None, first), 30, "the next idle probe")
    assert svc.lab_pid == lab
    released = time.time()
    finish.touch()
    state = svc.wait_ready(not_pid=lab, timeout=60)
    worker.join(timeout=30)
    (stopped,) = [e for e in _events(svc, "lab_stopping") if e["reason"] == "reload"]
    when = datetime.datetime.fromisoformat(stopped["timestamp"]).timestamp()
    assert when >= released, "restarted while the kernel was busy"
    assert state["reload_pending"] is None


def _busy_pending(svc) -> str | None:
    """What the pending reload said after its last probe found a busy kernel."""
    pending = svc.state().get("reload_pending") or ""
    return pending if "busy kernel" in pending else None


def test_reload_to_a_port_in_use_is_rejected_and_keeps_serving(service):
    import socket

    service.start()
    token = service.cli("token").stdout.strip()
    lab = service.lab_pid
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        service.sections["lab"]["port"] = taken
        service.write_config()
        state = wait_for(
            lambda: (s := service.state()).get("config_error") and s, 30, "the rejected reload"
        )
    assert f"[lab] port: port {taken} on 127.0.0.1 is in use" in state["config_error"]
    assert state["status"] == "ready" and service.lab_pid == lab
    assert service.api("GET", "api/contents", token).status_code == 200
    assert len(_events(service, "lab_starting")) == 1


@WARM_AND_COLD
def test_change_during_a_reload_leads_to_exactly_one_more(service):
    service.start()
    first_lab = service.lab_pid
    port_a, port_b = free_port(), free_port()
    service.sections["lab"]["port"] = port_a
    save_by_rename(service.config_path, render_toml(service.sections))
    # The restart for port A is under way (the old JupyterLab is told to stop)...
    wait_for(
        lambda: [e for e in _events(service, "lab_stopping") if e["reason"] == "reload"],
        30,
        "the restart for the first change",
    )
    service.sections["lab"]["port"] = port_b  # ...when the file changes again.
    save_by_rename(service.config_path, render_toml(service.sections))

    state = wait_for(
        lambda: (s := service.state()).get("status") == "ready" and s.get("port") == port_b and s,
        90,
        "JupyterLab on the newest port",
    )
    _settled(service)  # nothing else may follow
    reloads = _events(service, "config_reloaded")
    assert [(e["source"], e["result"]) for e in reloads] == [
        ("file", "applied"),
        ("file", "applied"),
        ("SIGHUP", "unchanged"),
    ]
    # Port A starts only if the second change came after A was already being started; either
    # way the newest content is what runs, and nothing starts after it.
    restarts = [e["port"] for e in _events(service, "lab_starting")][1:]
    assert restarts in ([port_b], [port_a, port_b]), restarts
    assert service.lab_pid == state["lab_pid"] != first_lab
    service.port = port_b
    assert service.api("GET", "api").status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port_a}/api", timeout=5)
