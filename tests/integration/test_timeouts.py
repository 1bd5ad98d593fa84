"""[restart] start_timeout and stop_timeout, with real processes that do not cooperate."""

from __future__ import annotations

import datetime
import os
import signal
import textwrap

import psutil
import pytest
from helpers.procs import pid_alive, wait_for
from helpers.service import Service


def _when(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["timestamp"]).timestamp()


def _events(svc, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


def test_a_server_that_never_answers_is_stopped_at_start_timeout_and_counted(service_factory):
    # 3 s, not the default 120 s: the same timer, without two minutes per start.
    svc = service_factory(restart={"start_timeout": 3})
    script = svc.root / "silent.sh"  # runs, prints nothing, answers nothing
    script.write_text("#!/bin/sh\nexec sleep 600\n")
    script.chmod(0o755)
    svc.sections["lab"]["command"] = [str(script)]
    svc.write_config()
    svc.start(wait=False)

    wait_for(lambda: len(_events(svc, "lab_starting")) >= 2, 60, "the start after the timeout")
    first, second = _events(svc, "lab_starting")[:2]
    (timed_out,) = [e for e in _events(svc, "lab_start_timeout") if e["pid"] == first["pid"]]
    assert timed_out["timeout_s"] == 3
    # The timer starts as JupyterLab is taken in charge, just before lab_starting is logged.
    assert 3 - 0.1 <= _when(timed_out) - _when(first) < 3 + 5
    (exited,) = [e for e in _events(svc, "lab_exited") if e["pid"] == first["pid"]]
    assert exited["reason"] == "start_timeout"
    assert exited["status"] == "killed by SIGTERM"
    assert not pid_alive(first["pid"])
    # Counted as a failed start: the next one is the first retry of the backoff.
    scheduled = _events(svc, "lab_restart_scheduled")[0]
    assert (scheduled["failures"], scheduled["delay_s"]) == (1, 0.0)
    assert _when(second) >= _when(exited)
    state = svc.state()
    assert "JupyterLab did not answer within 3 s" in (state["last_error"] or "")
    assert state["last_exit"]["reason"] == "start_timeout"


@pytest.fixture(scope="session")
def stubborn_leftover(early_service_factory) -> tuple[Service, psutil.Process, int]:
    """A crash leaves a process that ignores SIGTERM, with the default stop_timeout (20 s):
    made by an early test, so that the 20 s pass while the other tests run. The service, the
    leftover's pid, and the crashed JupyterLab's."""
    # A crash keeps the kernels (and what they started) by default: here they are the
    # leftovers to sweep, as they are with survive_restarts = false.
    service = early_service_factory("stubborn", kernels={"survive_restarts": False})
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, _ = service.start_kernel(token)
    armed = service.notebooks / "armed"
    ignores = (
        "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(armed)!r}).touch(); time.sleep(600)"
    )
    stubborn = psutil.Process(
        int(
            service.execute(
                token,
                kernel_id,
                "import subprocess, sys\n"
                f"child = subprocess.Popen([sys.executable, '-c', {ignores!r}], "
                "start_new_session=True)\nprint(child.pid)",
            )
        )
    )
    wait_for(armed.exists, 30, "the leftover to ignore SIGTERM")
    old = service.lab_pid
    os.kill(old, signal.SIGKILL)
    return service, stubborn, old


@pytest.mark.early
def test_a_leftover_that_ignores_sigterm_is_sent_sigterm_first(stubborn_leftover):
    service, stubborn, _ = stubborn_leftover
    wait_for(
        lambda: [e for e in _events(service, "leftover_process") if e["pid"] == stubborn.pid],
        60,
        "the leftover to be told to stop",
    )
    assert pid_alive(stubborn), "it ignores SIGTERM: still there, until stop_timeout"


def test_a_leftover_that_ignores_sigterm_is_killed_after_stop_timeout(stubborn_leftover):
    """With the default stop_timeout (20 s): SIGTERM, then SIGKILL; only then the next start
    (the crash was an early test's, above)."""
    service, stubborn, old = stubborn_leftover
    state = service.wait_ready(not_pid=old, timeout=120)

    (termed,) = [e for e in _events(service, "leftover_process") if e["pid"] == stubborn.pid]
    (killed,) = [e for e in _events(service, "leftover_killed") if stubborn.pid in e["pids"]]
    assert killed["grace_s"] == 20.0  # [restart] stop_timeout's default
    assert 20 <= _when(killed) - _when(termed) < 20 + 5
    assert not pid_alive(stubborn)
    restarted = [e for e in _events(service, "lab_starting") if e["pid"] == state["lab_pid"]]
    assert _when(restarted[0]) >= _when(killed)  # no new JupyterLab beside the old one's
    service.cleanup()


# A stand-in for JupyterLab that ignores SIGTERM (as one wedged in a shutdown hook would):
# it answers jlservice's readiness probe, GET {base_url}api, on the address it is given.
STUBBORN_LAB = textwrap.dedent(
    """\
    #!/usr/bin/python3
    import http.server, signal, sys
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    given = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    api = given["ServerApp.base_url"] + "api"
    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path.split("?")[0] == api
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b'{"version": "2.0.0"}' if ok else b"")
        def log_message(self, *args):
            pass
    address = (given["ServerApp.ip"], int(given["ServerApp.port"]))
    http.server.HTTPServer(address, Api).serve_forever()
    """
)


@pytest.fixture(scope="session")
def stubborn_lab(early_service_factory) -> tuple[Service, int]:
    """A JupyterLab that ignores SIGTERM, its jlservice told to stop (SIGTERM) by an early
    test, with the default stop_timeout (20 s), which passes while the other tests run. The
    service and the JupyterLab's pid."""
    # The stand-in binds its own port: it cannot serve the socket jlservice holds for
    # JupyterLab when kernels survive restarts.
    service = early_service_factory("stubborn-lab", kernels={"survive_restarts": False})
    script = service.root / "stubborn-lab"
    script.write_text(STUBBORN_LAB)
    script.chmod(0o755)
    service.sections["lab"]["command"] = [str(script)]
    service.write_config()
    service.start()
    lab = service.lab_pid
    service.signal(signal.SIGTERM)
    return service, lab


@pytest.mark.early
def test_a_jupyterlab_that_ignores_sigterm_is_sent_sigterm_first(stubborn_lab):
    service, lab = stubborn_lab
    wait_for(
        lambda: [e for e in _events(service, "lab_stopping") if e["pid"] == lab],
        60,
        "jlservice to stop JupyterLab",
    )
    assert pid_alive(lab), "it ignores SIGTERM: still there, until stop_timeout"


def test_a_jupyterlab_that_ignores_sigterm_is_killed_after_stop_timeout(stubborn_lab):
    """SIGTERM, then SIGKILL after the default stop_timeout (20 s); then jlservice stops
    (the stop was asked by an early test, above)."""
    service, lab = stubborn_lab
    assert service.wait_exit(timeout=120) == 0
    (stopping,) = [e for e in _events(service, "lab_stopping") if e["pid"] == lab]
    (timed_out,) = [e for e in _events(service, "lab_stop_timeout") if e["pid"] == lab]
    (exited,) = [e for e in _events(service, "lab_exited") if e["pid"] == lab]
    assert timed_out["timeout_s"] == 20.0  # [restart] stop_timeout's default
    assert 20 <= _when(timed_out) - _when(stopping) < 20 + 5
    assert exited["status"] == "killed by SIGKILL"
    assert not pid_alive(lab)
    service.cleanup()
