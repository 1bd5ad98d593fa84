"""The exporter's supervisor figures with a real jlservice and a real JupyterLab."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest
import requests
from helpers.metrics import metrics_section, metrics_url, scrape, value, wait_scrape
from helpers.procs import free_port, wait_for
from helpers.service import IS_ROOT, render_toml

import jlservice


def test_supervisor_figures_across_a_crash_and_reloads(service_factory) -> None:
    # Only `jlservice reload` reloads here (no file watcher), so every count is exact.
    svc = service_factory(metrics=metrics_section(gpu=False), reload={"watch": False})
    before = time.time()
    svc.start()
    url = metrics_url(svc)
    first = svc.lab_pid
    info = {
        "version": jlservice.__version__,
        "jupyterlab_version": importlib.metadata.version("jupyterlab"),
        "user": svc.account.name,  # whom JupyterLab runs as
    }
    s = wait_scrape(url, lambda s: value(s, "jlservice_info", **info) == 1, "jlservice_info")
    assert value(s, "jlservice_up") == 1
    for reason in ("crash", "unhealthy", "reload", "rotate"):
        assert value(s, "jlservice_restarts_total", reason=reason) == 0
    for result in ("applied", "unchanged", "rejected"):
        assert value(s, "jlservice_config_reloads_total", result=result) == 0
    assert value(s, "jlservice_config_error") == 0
    # /proc's start time counts from a boot time rounded to the second: as close as that.
    started = value(s, "jlservice_start_time_seconds")
    assert before <= started <= time.time()
    assert started == pytest.approx(psutil.Process(first).create_time(), abs=1.0)
    assert 0 < value(s, "jlservice_ready_duration_seconds") < 60
    assert not any(name.startswith("jlservice_gpu_") for name, _ in s)  # gpu = false

    killed = time.time()
    os.kill(first, signal.SIGKILL)
    svc.wait_ready(not_pid=first)
    s = wait_scrape(
        url,
        lambda s: (
            value(s, "jlservice_up") == 1
            and value(s, "jlservice_restarts_total", reason="crash") == 1
        ),
        "a crash counted and JupyterLab up again",
    )
    assert killed < value(s, "jlservice_start_time_seconds") < time.time()

    svc.write_config(render_toml({**svc.sections, "metrics": {"listen": 42}}))
    done = svc.cli("reload")
    assert done.returncode == 78
    assert "[metrics] listen: expected a string, got an integer 42" in done.stderr
    s = scrape(url)
    assert value(s, "jlservice_config_error") == 1
    assert value(s, "jlservice_config_reloads_total", result="rejected") == 1

    # [metrics] applies live: a new address, and JupyterLab keeps running.
    lab = svc.lab_pid
    svc.sections["metrics"]["listen"] = f"127.0.0.1:{free_port()}"
    svc.write_config()
    assert svc.cli("reload").returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)
    url = metrics_url(svc)
    s = scrape(url)
    assert value(s, "jlservice_config_error") == 0
    assert value(s, "jlservice_config_reloads_total", result="unchanged") == 1
    assert svc.lab_pid == lab

    svc.sections["lab"]["port"] = svc.port = free_port()
    svc.write_config()
    assert svc.cli("reload").returncode == 0
    svc.wait_ready(not_pid=lab)
    s = wait_scrape(url, lambda s: value(s, "jlservice_up") == 1, "JupyterLab up on its new port")
    assert value(s, "jlservice_config_reloads_total", result="applied") == 1
    assert value(s, "jlservice_restarts_total", reason="reload") == 1
    assert value(s, "jlservice_restarts_total", reason="crash") == 1

    lab = svc.lab_pid
    svc.sections["metrics"]["enabled"] = False
    svc.write_config()
    assert svc.cli("reload").returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)
    assert svc.lab_pid == lab and svc.state()["status"] == "ready"


def _sampled(svc, offset: int) -> list[dict]:
    """The sampler's requests that JupyterLab logged after byte `offset` of our log."""
    return [
        e
        for e in svc.log_events(offset)
        if e.get("event") == "lab_output" and "GET /api/kernels" in e.get("line", "")
    ]


def test_kernels_by_state(service_factory) -> None:
    # JupyterLab logs the requests it answers 200 at debug level only: there the sampler's
    # rounds show, every [metrics] interval (5 s).
    debug = {"options": {"ServerApp.log_level": "DEBUG"}}
    svc = service_factory(metrics=metrics_section(gpu=False), lab=debug)
    svc.start()
    token = svc.state()["token"]
    url = metrics_url(svc)
    wait_scrape(url, lambda s: value(s, "jlservice_kernels", state="idle") == 0, "no kernels")
    # Sampling api/kernels and api/sessions is no activity: idle servers can still be culled.
    idle_since = svc.api("GET", "api/status", token).json()["last_activity"]
    offset = svc.log_path.stat().st_size
    wait_for(lambda: len(_sampled(svc, offset)) >= 2, 60, "two rounds of the sampler")
    assert svc.api("GET", "api/status", token).json()["last_activity"] == idle_since
    kernel_id, _ = svc.start_kernel(token)
    # jupyter_server says "starting" until a client connects; running code makes it busy,
    # here until the test has seen it busy.
    done = svc.notebooks / "seen-busy"
    code = f"import os, time\nwhile not os.path.exists({str(done)!r}): time.sleep(0.05)"
    running = threading.Thread(target=svc.execute, args=(token, kernel_id, code))
    svc.execute(token, kernel_id, "import time")
    running.start()
    try:
        s = wait_scrape(url, lambda s: value(s, "jlservice_kernels", state="busy") == 1, "busy")
        assert value(s, "jlservice_kernels", state="idle") == 0
    finally:
        done.touch()
        running.join()
    wait_scrape(url, lambda s: value(s, "jlservice_kernels", state="idle") == 1, "idle again")
    svc.api("DELETE", f"api/kernels/{kernel_id}", token).raise_for_status()
    wait_scrape(url, lambda s: value(s, "jlservice_kernels", state="idle") == 0, "0 idle")


def test_a_taken_metrics_port_never_takes_jupyterlab_down(service_factory) -> None:
    with socket.socket() as holder, socket.socket() as other:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        svc = service_factory(metrics=metrics_section(listen=f"127.0.0.1:{port}"))
        svc.start()  # waits for JupyterLab to be ready
        failed = [e for e in svc.log_events() if e.get("event") == "metrics_listen_failed"]
        assert len(failed) == 1 and failed[0]["level"] == "error"
        assert f"[metrics] listen: 127.0.0.1:{port} is in use" in failed[0]["problem"]

        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        svc.write_config(render_toml({**svc.sections, "metrics": {"listen": f"127.0.0.1:{taken}"}}))
        done = svc.cli("reload")
        assert done.returncode == 78
        assert f"[metrics] listen: port {taken} on 127.0.0.1 is in use" in done.stderr
        assert svc.state()["status"] == "ready"

    svc.write_config()  # the original address, free now: a reload tries it again
    assert svc.cli("reload").returncode == 0
    s = wait_scrape(metrics_url(svc), lambda s: value(s, "jlservice_up") == 1, "the exporter")
    assert value(s, "jlservice_config_error") == 0


def _status_as(account, url: str, token: str | None = None) -> int:
    """The HTTP status `account` gets for GET `url` (with `token` as a bearer token)."""
    code = (
        "import sys, urllib.error, urllib.request\n"
        "r = urllib.request.Request(sys.argv[1])\n"
        "if len(sys.argv) > 2: r.add_header('Authorization', 'Bearer ' + sys.argv[2])\n"
        "try: print(urllib.request.urlopen(r, timeout=10).status)\n"
        "except urllib.error.HTTPError as e: print(e.code)\n"
    )
    argv = ["/usr/bin/python3", "-c", code, url, *([token] if token else [])]
    done = subprocess.run(
        argv, user=account.uid, group=account.gid, cwd="/", capture_output=True, text=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not IS_ROOT, reason="a scrape as another local user needs root")
def test_a_bearer_token_keeps_other_local_users_out(service_factory, tmp_path, other_user):
    token, new = "f00dfeed" * 8, "c0ffee00" * 8
    token_file = tmp_path / "metrics.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    svc = service_factory(metrics=metrics_section(gpu=False, bearer_token_file=str(token_file)))
    svc.start()
    url = metrics_url(svc)
    wait_scrape(url, lambda s: value(s, "jlservice_up") == 1, "jlservice_up", token=token)
    refused = requests.get(url, timeout=10)
    assert refused.status_code == 401 and "jlservice_" not in refused.text
    assert _status_as(other_user, url) == 401
    assert _status_as(other_user, url, "guessed" * 4) == 401
    assert _status_as(other_user, url, token) == 200

    doctor = svc.cli("doctor")
    line = next(x for x in doctor.stdout.splitlines() if x.startswith(("✓ metrics", "✗ metrics")))
    assert line == f"✓ metrics: GET {url} → 200 with the bearer token, 401 without", line
    assert token not in doctor.stdout + doctor.stderr

    token_file.write_text(new)  # rotated: a reload reads it again, JupyterLab is not touched
    lab = svc.lab_pid
    assert svc.cli("reload").returncode == 0
    assert (
        requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code
        == 401
    )
    assert scrape(url, token=new)
    assert svc.lab_pid == lab
    token_file.chmod(0o644)
    done = svc.cli("reload")
    assert done.returncode == 78 and "readable by every user: `chmod 600" in done.stderr
    assert scrape(url, token=new)  # the running exporter keeps its token
    assert token not in svc.log_text() and new not in svc.log_text()
