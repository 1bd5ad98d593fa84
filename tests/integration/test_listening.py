"""JupyterLab's port never stops listening across its restarts ([kernels] survive_restarts):
jlservice holds the listening socket and hands it to each JupyterLab, so a request made
while none runs waits and is served by the next one — never refused (JupyterLab's front
end, refused, retries its kernel only after a random 10–30 s)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import psutil
import pytest
import requests
from helpers.procs import free_port, wait_for
from helpers.service import event_time
from helpers.squatter import Squatter

from jlservice import listener, net


def _url(ip: str, port: int, path: str) -> str:
    return net.local_url(ip, port, f"/{path}")


def _status(ip: str, port: int, token: str, timeout: float = 120) -> requests.Response:
    headers = {"Authorization": f"token {token}"}
    return requests.get(_url(ip, port, "api/status"), headers=headers, timeout=timeout)


def _gone(pid: int) -> bool:
    """Exited: its descriptors are closed (a zombie until jlservice reaps it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listening_inodes(port: int) -> set[int]:
    return {s.inode for s in listener.listening(port)}


def _refused(ip: str, port: int) -> bool:
    host = net.reachable_host(ip)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(10)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError:
            return True
    return False


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "0.0.0.0"])
def test_a_request_made_while_no_jupyterlab_runs_waits_and_is_served(service_factory, ip):
    service = service_factory(lab={"ip": ip})
    service.start()
    token = service.cli("token").stdout.strip()
    assert _status(ip, service.port, token).status_code == 200
    lab, offset = service.lab_pid, service.log_size()
    os.kill(lab, signal.SIGKILL)
    wait_for(lambda: _gone(lab), 30, "JupyterLab to die", 0.001)
    asked = time.time()
    response = _status(ip, service.port, token)  # the old code: connection refused
    assert response.status_code == 200
    ready = wait_for(
        lambda: [e for e in service.log_events(offset) if e.get("event") == "lab_ready"],
        60,
        "the next JupyterLab's lab_ready",
    )
    assert asked < event_time(ready[0])  # asked in the gap, before the next one served
    assert response.json()["started"]  # JupyterLab's own answer


def test_a_port_change_lets_the_old_port_go_and_the_kernel_is_adopted(service_factory):
    service = service_factory()
    service.start()
    token = service.cli("token").stdout.strip()
    kernel_id, _ = service.start_kernel(token)
    old, new = service.port, free_port()
    lab = service.lab_pid
    service.port = service.sections["lab"]["port"] = new
    service.write_config()
    service.wait_ready(not_pid=lab)
    assert _status("127.0.0.1", new, token).status_code == 200
    assert service.api("GET", f"api/kernels/{kernel_id}", token).status_code == 200
    assert _refused("127.0.0.1", old)
    assert not _listening_inodes(old)


def test_jupyterlab_shares_jlservices_socket_and_no_kernel_or_shell_gets_it(service_factory):
    service = service_factory()
    service.wait_warm = True  # the second JupyterLab is forked by the warm parent
    service.start()
    token = service.cli("token").stdout.strip()
    for restart in range(2):  # a cold start, then a warm one
        held = _listening_inodes(service.port)
        assert held and held <= _socket_inodes(service.proc.pid)  # jlservice holds it…
        assert held <= _socket_inodes(service.lab_pid)  # …and JupyterLab serves it
        _, kernel = service.start_kernel(token)
        shell = int(service.open_terminal(token)[1])
        others = psutil.Process(service.lab_pid).children(recursive=True)
        assert {kernel, shell} <= {p.pid for p in others}
        for process in others:  # short-lived ones too (node reading yarn's config)
            with contextlib.suppress(psutil.NoSuchProcess, FileNotFoundError):  # gone since
                assert not held & _socket_inodes(process.pid), process.cmdline()
                assert "JLSERVICE_LISTEN_FDS" not in process.environ()
        if restart == 0:
            lab = service.lab_pid
            os.kill(lab, signal.SIGKILL)
            assert service.wait_ready(not_pid=lab)["started_warm"]


def test_with_survive_restarts_false_jupyterlab_binds_the_port_itself(service_factory):
    service = service_factory(kernels={"survive_restarts": False})
    service.start()
    held = _listening_inodes(service.port)
    assert held and held <= _socket_inodes(service.lab_pid)
    assert not held & _socket_inodes(service.proc.pid)


def test_the_port_is_free_once_jlservice_stops(service_factory):
    service = service_factory()
    service.start()
    service.signal(signal.SIGTERM)
    assert service.wait_exit(60) == 0
    net.require_free("127.0.0.1", service.port)  # raises PortInUse if still held


def test_no_other_program_takes_the_port_when_jupyterlab_dies(service, other_user, tmp_path):
    """With survive_restarts = false, a squatter can (test_port_squatter.py)."""
    service.start()
    token = service.cli("token").stdout.strip()
    held = _listening_inodes(service.port)
    lab = service.lab_pid
    record = tmp_path / "squatter.jsonl"
    # It tries to bind every 5 ms, from before JupyterLab dies until the next one serves.
    with Squatter(record, "127.0.0.1", service.port, b"jupyter-lab").start(other_user) as squatter:
        os.kill(lab, signal.SIGKILL)
        service.wait_ready(not_pid=lab)
        assert _status("127.0.0.1", service.port, token).status_code == 200
        assert _listening_inodes(service.port) == held
        assert squatter.requests() == []


def test_a_squatter_bound_first_cannot_listen(service, other_user, tmp_path):
    """Bound with SO_REUSEADDR, it lets jlservice bind too; then jlservice listens first."""
    record = tmp_path / "squatter.jsonl"
    squatter = Squatter(record, "127.0.0.1", service.port, b"jupyter-lab", listen_later=True)
    with squatter.start(other_user):
        squatter.wait_bound()
        service.start()
        squatter.listen()  # fails: EADDRINUSE
        wait_for(lambda: squatter.proc.poll() is not None, 30, "the squatter to fail")
        token = service.cli("token").stdout.strip()
        assert _status("127.0.0.1", service.port, token).status_code == 200
        assert squatter.requests() == []


def test_https_is_served_on_the_held_socket_through_the_gap(service):
    """JupyterLab's TLS settings apply to the socket it is handed."""
    service.use_certificate(days=30)
    service.write_config()
    service.start()
    token = service.cli("token").stdout.strip()
    assert service.api("GET", "api/status", token).status_code == 200
    lab = service.lab_pid
    os.kill(lab, signal.SIGKILL)
    wait_for(lambda: _gone(lab), 30, "JupyterLab to die", 0.001)
    response = service.api("GET", "api/status", token)
    assert response.status_code == 200 and response.url.startswith("https://")
    assert service.wait_ready(not_pid=lab)
