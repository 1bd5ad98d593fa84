"""Another local user takes JupyterLab's port: its process name cannot talk to systemd or the
terminal for jlservice, and the token never goes to it."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import psutil
import pytest
from helpers.procs import free_port, wait_for
from helpers.service import IS_ROOT
from helpers.squatter import Squatter

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to run a process as another user")

# 15 bytes, all that prctl(PR_SET_NAME) keeps: a line of its own for sd_notify, and an ESC.
HOSTILE = b"\nMAINPID=4242\n\x1b"
SHOWN = "\\nMAINPID=4242\\n\\x1b"
# What sd_notify messages of jlservice may hold; BARRIER=1 travels with a file descriptor.
FIELDS = {"READY", "STATUS", "STOPPING", "RELOADING", "MONOTONIC_USEC", "WATCHDOG", "BARRIER"}


def _controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F]


def _events(svc, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


def test_a_squatters_name_adds_no_field_to_sd_notify(
    service_factory, other_user, notify_socket, tmp_path
):
    svc = service_factory(log={"format": "console"})  # the log as a terminal or journal shows it
    record = tmp_path / "squatter.jsonl"
    with Squatter(record, "127.0.0.1", svc.port, HOSTILE).start(other_user) as squatter:
        pid = squatter.wait_listening()
        svc.start(wait=False, env={"NOTIFY_SOCKET": notify_socket.path})
        # jlservice waits for the port (it never gives up on it), saying who holds it.
        waiting = [
            notify_socket.read_until(
                lambda m: m.get("STATUS", "").startswith("Waiting for JupyterLab's port"),
                timeout=90,
            )["STATUS"]
            for _ in range(2)
        ]
        status = svc.cli("status")
    holder = f"in use by pid {pid} ({SHOWN}) of user {other_user.name}"
    to_systemd = holder.replace("\\", "\\\\")  # systemd drops one backslash of each pair
    assert all(to_systemd in line for line in waiting), waiting

    # `jlservice status` and the console log show the name escaped, on the line it belongs to.
    assert status.returncode == 0
    assert f"last error:  port {svc.port} on 127.0.0.1 is {holder}" in status.stdout
    assert not _controls(status.stdout), status.stdout
    log = svc.log_text()
    assert holder in log and not _controls(log)
    assert not [line for line in log.splitlines() if line.startswith("MAINPID")]

    # The squatter has gone: JupyterLab serves within [restart] max_delay.
    notify_socket.read_until(lambda m: m.get("READY") == "1", timeout=60)
    sent = [fields for _, fields in notify_socket.messages]
    assert [f for f in sent if not set(f) <= FIELDS] == [], sent


# With survive_restarts = false JupyterLab binds its port itself, and a squatter can take it
# when JupyterLab dies, or listen before it binds; with the default jlservice holds the port
# throughout, and no squatter gets it (test_listening.py).
NOT_HELD = {"survive_restarts": False}


def test_doctor_never_sends_the_token_to_whoever_holds_the_port(
    service_factory, other_user, tmp_path
):
    service = service_factory(kernels=NOT_HELD)
    service.start()
    token = service.cli("token").stdout.strip()
    lab = service.lab_pid
    record = tmp_path / "squatter.jsonl"
    # It names itself as JupyterLab does, and takes the port the moment JupyterLab dies.
    with Squatter(record, "127.0.0.1", service.port, b"jupyter-lab").start(other_user) as squatter:
        service.signal(signal.SIGSTOP)  # a supervisor that has not yet seen the exit
        try:
            os.kill(lab, signal.SIGKILL)
            pid = squatter.wait_listening()
            assert service.state()["status"] == "ready"  # what the doctor reads
            result = service.cli("doctor")
        finally:
            service.signal(signal.SIGCONT)
    assert result.returncode == 1, result.stdout
    assert (
        f"✗ port: 127.0.0.1:{service.port} is held by pid {pid} (jupyter-lab) of user "
        f"{other_user.name}, not by jlservice's JupyterLab: the token is not sent there"
    ) in result.stdout
    assert "- token: not checked" in result.stdout
    leaked = [r for r in squatter.requests() if token in r or "authorization:" in r.lower()]
    assert leaked == []


def test_the_idle_reload_probe_never_sends_the_token_to_whoever_holds_the_port(
    service_factory, other_user, tmp_path
):
    # Kernels (and what they start) are kept across a crash by default; here what the kernel
    # started must be a leftover the sweep waits for, as with survive_restarts = false.
    svc = service_factory(reload={"when": "idle"}, kernels={"survive_restarts": False})
    svc.start()
    token = svc.cli("token").stdout.strip()
    kernel_id, _ = svc.start_kernel(token)
    # A busy kernel: the reload waits for it, probing every second. What it started outlives
    # JupyterLab (it ignores SIGTERM), so the sweep after JupyterLab's death takes
    # [restart] stop_timeout, and the reload still waits meanwhile.
    code = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "time.sleep(600)"
    )
    busy = threading.Thread(target=_quietly, args=(svc.execute, token, kernel_id, code))
    busy.daemon = True
    busy.start()
    wait_for(
        lambda: any(
            k["execution_state"] == "busy" for k in svc.api("GET", "api/kernels", token).json()
        ),
        30,
        "a busy kernel",
    )
    svc.sections["lab"]["env"] = {"JLSERVICE_TEST_RELOAD": "1"}  # JupyterLab must restart
    svc.write_config()
    first = wait_for(lambda: _waiting(svc), 30, "the reload to find the kernel busy")
    lab = svc.lab_pid
    record = tmp_path / "squatter.jsonl"
    with Squatter(record, "127.0.0.1", svc.port, b"jupyter-lab").start(other_user) as squatter:
        # Right after a probe (it says so each second): none is in flight when JupyterLab dies.
        wait_for(lambda: _waiting(svc) not in (None, first), 30, "the next probe", 0.01)
        os.kill(lab, signal.SIGKILL)
        squatter.wait_listening()
        wait_for(lambda: _events(svc, "lab_exited"), 30, "the supervisor to see the exit")
        sweeping = svc.state()
        assert not _events(svc, "leftover_killed")  # still sweeping
        assert (sweeping["status"], sweeping["lab_pid"]) == ("stopping", None)
        # The sweep waited its full grace: the probe had rounds enough.
        wait_for(lambda: _events(svc, "leftover_killed"), 60, "the sweep to end")
        requests = squatter.requests()
    assert [r for r in requests if token in r or "authorization:" in r.lower()] == []
    assert len(_events(svc, "reload_idle_unknown")) == 1


def test_a_squatter_that_listens_first_does_not_pass_for_jupyterlab(
    service_factory, other_user, tmp_path
):
    # Its own metrics port: the sampler sends the token to a JupyterLab believed ready.
    svc = service_factory(metrics={"listen": f"127.0.0.1:{free_port()}"}, kernels=NOT_HELD)
    record = tmp_path / "squatter.jsonl"
    squatter = Squatter(record, "127.0.0.1", svc.port, b"jupyter-lab", listen_later=True)
    with squatter.start(other_user):
        squatter.wait_bound()  # with SO_REUSEADDR: jlservice's check still finds it free
        svc.start(wait=False)
        # JupyterLab, spawned: it takes seconds to import before it binds.
        lab = wait_for(lambda: _children(svc.proc.pid), 60, "JupyterLab to be spawned", 0.01)[0]
        squatter.listen()
        squatter.wait_listening()
        exited = wait_for(
            lambda: [e for e in _events(svc, "lab_exited") if e["pid"] == lab], 120, "its exit"
        )
        requests = squatter.requests()
    assert requests, "the readiness probe asked the squatter"
    assert [r for r in requests if "authorization:" in r.lower()] == []
    assert _events(svc, "lab_ready") == [], exited
    assert _events(svc, "lab_port_taken")


def _waiting(svc) -> str | None:
    """What the pending reload said after its last probe found a busy kernel."""
    pending = svc.state().get("reload_pending") or ""
    return pending if "busy kernel" in pending else None


def _children(pid: int) -> list[int]:
    with contextlib.suppress(psutil.Error):
        return [p.pid for p in psutil.Process(pid).children()]
    return []


def _quietly(run, *args) -> None:
    """A call that ends when JupyterLab goes away (the websocket closes under it)."""
    with contextlib.suppress(Exception):
        run(*args)
