"""Warm restarts with a real JupyterLab: what a warm-started server is, and how the warm
parent is kept fresh, replaced and survived."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from pathlib import Path

import psutil
import pytest
import requests
from helpers.metrics import metrics_section, metrics_url, scrape, value, wait_scrape
from helpers.procs import pid_alive, wait_for
from helpers.service import IS_ROOT, Service, render_toml


def _warm_service(service_factory, **sections) -> Service:
    sections["restart"] = {"warm": True, **sections.get("restart", {})}
    svc = service_factory(**sections)
    svc.wait_warm = True
    return svc


def _warm_pid(svc: Service) -> int:
    return svc.state()["warm_parent"]["pid"]


def _crash(svc: Service) -> dict:
    """kill -9 JupyterLab; returns the state once the next one is ready."""
    old = svc.lab_pid
    os.kill(old, signal.SIGKILL)
    return svc.wait_ready(not_pid=old)


def _umask(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:"))


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_a_warm_started_lab_is_the_cold_one_served_faster(service_factory, other_user):
    svc = _warm_service(service_factory, lab={"user": other_user.name})
    svc.notebooks.chmod(0o755)
    os.chown(svc.notebooks, other_user.uid, other_user.gid)
    first = svc.start().state()
    assert first["started_warm"] is False  # the first start never waits for a warm parent
    cold = psutil.Process(first["lab_pid"])
    cold_env, cold_umask = cold.environ(), _umask(cold.pid)
    # Which descriptor is its listening socket: a cold start is told in its environment, a
    # warm one in os.environ after the fork (neither hands it on: test_listening.py).
    assert cold_env.pop("JLSERVICE_LISTEN_FDS").isdigit()

    state = _crash(svc)
    assert state["started_warm"] is True
    lab = psutil.Process(state["lab_pid"])
    assert lab.ppid() == svc.proc.pid  # the supervisor's child: it reaps it and its orphans
    assert lab.uids().real == lab.uids().effective == other_user.uid
    assert lab.gids().real == other_user.gid
    assert lab.environ() == cold_env
    assert Path(lab.cwd()) == svc.notebooks
    assert _umask(lab.pid) == cold_umask == "0077"
    assert lab.name() == "jupyter-lab"

    token = svc.cli("token").stdout.strip()
    page = svc.api("GET", "lab", token)
    assert page.status_code == 200 and "jupyter-config-data" in page.text
    kernel_id, kernel_pid = svc.start_kernel(token)
    assert psutil.Process(kernel_pid).uids().real == other_user.uid
    assert svc.execute(token, kernel_id, "import os; print(os.getuid())").strip() == str(
        other_user.uid
    )
    assert svc.open_terminal(token, "id -u")[1] == str(other_user.uid)
    for proc in psutil.process_iter(["cmdline"]):
        assert token not in " ".join(proc.info["cmdline"] or []), proc

    # Crash again: the kernel of the warm-started server is kept like any other.
    state = _crash(svc)
    assert state["started_warm"] is True
    wait_for(lambda: svc.state().get("kernels", {}).get("adopted") == 1, 30, "its adoption")
    assert pid_alive(kernel_pid)

    # The supervisor dies: JupyterLab, its kernel and the warm parent die with it.
    warm_parent, lab_pid = _warm_pid(svc), state["lab_pid"]
    svc.proc.kill()
    svc.proc.wait()
    wait_for(lambda: not pid_alive(lab_pid), 30, "JupyterLab to follow the supervisor")
    wait_for(lambda: not pid_alive(warm_parent), 30, "the warm parent to follow it")
    wait_for(lambda: not pid_alive(kernel_pid), 30, "the kernel to be shut down")


def test_a_new_server_extension_refreshes_the_warm_parent(service_factory, tmp_path):
    """Installed on JupyterLab's sys.path and enabled in its Jupyter config path: here
    directories of the test's own on PYTHONPATH and JUPYTER_CONFIG_PATH (watched as
    site-packages and etc/jupyter are), since the suite's venv serves tests running at once."""
    name = "jlstest_ext_" + secrets.token_hex(3)
    ext = tmp_path / "ext"
    enabled = ext / "config" / "jupyter_server_config.d"
    enabled.mkdir(parents=True)
    for directory in (ext, ext / "config", enabled):
        directory.chmod(0o755)
    env = {"PYTHONPATH": str(ext), "JUPYTER_CONFIG_PATH": str(ext / "config")}
    svc = _warm_service(service_factory, lab={"env": env})
    svc.start()
    before = _warm_pid(svc)
    module = ext / f"{name}.py"
    module.write_text(
        "from jupyter_server.base.handlers import JupyterHandler\n"
        "class Loaded(JupyterHandler):\n"
        "    def get(self):\n"
        "        self.finish('loaded')\n"
        "def _jupyter_server_extension_points():\n"
        f"    return [{{'module': {name!r}}}]\n"
        "def _load_jupyter_server_extension(app):\n"
        "    base = app.web_app.settings['base_url']\n"
        f"    app.web_app.add_handlers('.*$', [(base + {name!r}, Loaded)])\n"
    )
    module.chmod(0o644)
    enable = enabled / f"{name}.json"
    enable.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {name: True}}}))
    enable.chmod(0o644)

    # Replaced in the background, before any restart asks for it.
    def refreshed() -> bool:
        warm = svc.state().get("warm_parent") or {}
        return warm.get("pid") not in (None, before) and warm.get("ready")

    wait_for(refreshed, 60, "a new warm parent after the install")
    assert not pid_alive(before)
    events = [e for e in svc.log_events() if e["event"] == "warm_parent_retired"]
    assert events[-1]["reason"] == "packages or Jupyter configuration changed"

    state = _crash(svc)
    assert state["started_warm"] is True
    response = requests.get(svc.base + name, timeout=30)
    assert response.status_code == 200 and response.text == "loaded"


def _waited_for(svc: Service, offset: int, pid: int) -> None:
    """The start after `offset` in the log waited for warm parent `pid` and forked from it."""
    events = svc.log_events(offset)
    waited = [e for e in events if e["event"] == "lab_start_waits_for_warm_parent"]
    assert [e["pid"] for e in waited] == [pid]
    assert not [e for e in events if e["event"] == "lab_start_cold"]


def _forked_from_the_importing(svc: Service, offset: int, pid: int) -> bool:
    """kill -9 of JupyterLab while warm parent `pid` imports: the start waits for it and
    forks from it (True); or, if a loaded machine slowed its imports past what a cold start
    takes, gives it up after that long, and only then starts cold — never both at once."""
    if _crash(svc)["started_warm"]:
        _waited_for(svc, offset, pid)
        return True
    events = svc.log_events(offset)
    (waited,) = [e for e in events if e["event"] == "lab_start_waits_for_warm_parent"]
    assert waited["pid"] == pid
    (cold,) = [e for e in events if e["event"] == "lab_start_cold"]
    assert "still importing after" in cold["reason"], cold
    return False


def test_a_crash_while_the_warm_parent_imports_waits_for_it(service_factory):
    """kill -9 of the first JupyterLab while the warm parent it made still imports: the
    restart forks from that parent once it is ready, rather than a cold start fighting it
    for the CPU (bench/warm.py measures it against a cold start)."""
    svc = _warm_service(service_factory)
    svc.wait_warm = False
    svc.start()
    importing = wait_for(lambda: svc.state().get("warm_parent"), 10, "the warm parent")
    assert importing["ready"] is False
    offset = svc.log_size()
    if _forked_from_the_importing(svc, offset, importing["pid"]):
        assert _warm_pid(svc) == importing["pid"]


def test_a_killed_warm_parents_successor_serves_the_next_start(service_factory):
    svc = _warm_service(service_factory)
    svc.start()
    first = _warm_pid(svc)
    os.kill(first, signal.SIGKILL)
    successor = wait_for(
        lambda: (p := svc.state().get("warm_parent")) and p["pid"] != first and p["pid"],
        10,
        "a new warm parent",
    )
    assert any(e["event"] == "warm_parent_exited" for e in svc.log_events())
    offset = svc.log_size()
    _forked_from_the_importing(svc, offset, successor)  # its successor was still importing
    assert _crash(svc)["started_warm"] is True


def test_an_environment_change_replaces_the_warm_parent(service_factory):
    svc = _warm_service(service_factory, lab={"env": {"JLSTEST_WARM": "one"}})
    svc.start()
    first = _warm_pid(svc)
    old = svc.lab_pid
    svc.sections["lab"]["env"] = {"JLSTEST_WARM": "two"}
    svc.write_config()
    state = svc.wait_ready(not_pid=old)  # includes a warm parent with the new environment
    assert psutil.Process(state["lab_pid"]).environ()["JLSTEST_WARM"] == "two"
    assert _warm_pid(svc) != first and not pid_alive(first)
    assert psutil.Process(_warm_pid(svc)).environ()["JLSTEST_WARM"] == "two"
    state = _crash(svc)
    assert state["started_warm"] is True
    assert psutil.Process(state["lab_pid"]).environ()["JLSTEST_WARM"] == "two"


def test_warm_off_on_reload_ends_the_warm_parent_and_starts_cold(service_factory):
    svc = _warm_service(service_factory, reload={"watch": False})
    svc.start()
    first, lab = _warm_pid(svc), svc.lab_pid
    svc.sections["restart"]["warm"] = False
    svc.write_config()
    assert svc.cli("reload").returncode == 0
    wait_for(lambda: not pid_alive(first), 10, "the warm parent to end")
    assert svc.lab_pid == lab  # a supervisor setting: JupyterLab keeps running
    assert svc.state().get("warm_parent") is None
    svc.wait_warm = False
    assert _crash(svc)["started_warm"] is False


def test_warm_parent_memory_in_status_and_metrics(service_factory):
    svc = _warm_service(service_factory, metrics=metrics_section(gpu=False))
    svc.start()
    warm = _warm_pid(svc)
    rss = psutil.Process(warm).memory_info().rss
    assert rss > 20 * 2**20  # JupyterLab's modules are in it

    text = svc.cli("status").stdout
    line = next(line for line in text.splitlines() if line.startswith("warm parent:"))
    assert line.startswith(f"warm parent: ready (pid {warm}, ")
    mib = float(line.split(", ")[1].split()[0])
    assert mib == pytest.approx(rss / 2**20, rel=0.2)
    report = json.loads(svc.cli("status", "--json").stdout)
    assert report["warm_parent"]["pid"] == warm
    assert report["warm_parent"]["rss_bytes"] == pytest.approx(rss, rel=0.2)

    samples = wait_scrape(
        metrics_url(svc),
        lambda s: value(s, "jlservice_warm_parent_ready") == 1,
        "the warm parent in the metrics",
    )
    exported = value(samples, "jlservice_warm_parent_resident_memory_bytes")
    assert exported == pytest.approx(rss, rel=0.2)

    svc.sections["restart"]["warm"] = False
    svc.write_config(render_toml(svc.sections))
    wait_for(
        lambda: value(scrape(metrics_url(svc)), "jlservice_warm_parent_ready") is None,
        30,
        "the warm parent gone from the metrics",
    )


def _fds(pid: int) -> int:
    """Open fds, the fewest of a few looks: a health probe's socket comes and goes."""
    counts = []
    for _ in range(10):
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.05)
    return min(counts)


def test_soak_100_crash_restarts(service_factory):
    # 100 crashes in about a minute is a crash storm by the defaults (more than
    # max_crashes = 30 within reset_after = 60 s), which backs off by design: a window of
    # 0 s counts none. Ten crashes with the defaults: tests/unit/supervisor/test_lifecycle.py.
    svc = _warm_service(
        service_factory,
        restart={"reset_after": 0},
        log={"level": "info"},
    )
    svc.start()
    supervisor = psutil.Process(svc.proc.pid)
    warm = _warm_pid(svc)
    baseline: tuple[int, int] | None = None
    for cycle in range(100):
        # After the first ones, what a long-running supervisor holds: its allocator grows
        # for ~60 restarts of a switched user's JupyterLab, then stays (measured: 35.8 MiB
        # at 20, 36.5 at 60, 36.5 at 120 and after).
        if cycle == 60:
            baseline = (_fds(supervisor.pid), supervisor.memory_info().rss)
        state = _crash(svc)
        assert state["started_warm"] is True, f"cycle {cycle}: {state}"
    assert baseline is not None
    fds, rss = _fds(supervisor.pid), supervisor.memory_info().rss
    assert svc.state()["restarts"] == 100
    assert _warm_pid(svc) == warm  # one warm parent served them all
    # Probe sockets come and go; a descriptor lost per restart would be 80 more.
    assert fds - baseline[0] < 5, f"{fds - baseline[0]} more open files"
    assert rss - baseline[1] < 2**20, f"RSS grew by {(rss - baseline[1]) / 2**20:.1f} MiB"
    # Nothing left over: below the supervisor, just the warm parent and the current
    # JupyterLab with whatever it runs now.
    lab = svc.lab_pid
    for proc in supervisor.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            assert proc.pid in (lab, warm) or lab in (p.pid for p in proc.parents()), proc
    svc.signal(signal.SIGTERM)
    assert svc.wait_exit(30) == 0
    assert svc.leftovers() == []


def test_a_warm_start_that_fails_means_cold_starts_until_the_launch_changes(service_factory):
    svc = _warm_service(service_factory)
    svc.start()
    first = _warm_pid(svc)
    # A value JupyterLab rejects at start-up: the fork fails as a cold start would.
    svc.sections["lab"]["options"] = {"ServerApp.shutdown_no_activity_timeout": "soon"}
    svc.write_config()

    def starts() -> list[dict]:
        return [e for e in svc.log_events() if e["event"] == "lab_starting"]

    wait_for(lambda: len(starts()) >= 3, 60, "a failed warm start and a cold retry")
    assert [e["warm"] for e in starts()[:3]] == [False, True, False]
    failed = [e for e in svc.log_events() if e["event"] == "warm_parent_failed"]
    assert failed[0]["problem"] == "a JupyterLab it forked exited with status 1 starting"
    # Retired with SIGKILL when the fork failed: gone as soon as the kernel has delivered it.
    wait_for(lambda: not pid_alive(first), 10, "the distrusted warm parent to be ended")

    del svc.sections["lab"]["options"]  # fixed: a new launch, so a new warm parent
    svc.write_config()
    state = svc.wait_ready()
    assert state["warm_parent"]["pid"] != first
    assert _crash(svc)["started_warm"] is True
