"""The system unit under a real systemd: install, enable, start, reload, crashes, reboot, stop.

Each test boots its own systemd (see sandbox.py), installs jlservice with `jlservice install`
for a throw-away user, and drives it with systemctl.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers.procs import free_port, pid_alive, wait_for
from helpers.service import LabClient
from helpers.squatter import Squatter, waits_announced
from long_hold import LongHold
from sandbox import JLSERVICE, Sandbox, jupyterlab_pid

from jlservice.admin import unit_files

UNIT = "jlservice"


class Installed:
    """jlservice installed and enabled in a sandbox, for one user on one port."""

    def __init__(self, box: Sandbox, user: str, home: Path) -> None:
        self.box = box
        self.port = free_port()
        self.user = user
        out = box.run(JLSERVICE, "install", "--user", user, "--port", str(self.port)).stdout
        assert "wrote /etc/jlservice/jlservice.toml" in out, out
        assert "systemctl enable --now jlservice" in out, out
        self.log = box.log_to_file("jlservice.service")
        self.config = box.root / "etc-jlservice" / "jlservice.toml"
        self.notebooks = Path(home)
        self.lab = LabClient(f"http://127.0.0.1:{self.port}/")

    def start(self) -> dict[str, str]:
        self.box.systemctl("daemon-reload")
        self.box.systemctl("enable", UNIT)
        self.box.systemctl("start", UNIT)  # Type=notify: returns once READY=1 came
        return self.box.show(UNIT, "ActiveState", "StatusText", "NRestarts", "MainPID")

    def token(self) -> str:
        return self.box.run(JLSERVICE, "token").stdout.strip()

    def answers(self, token: str) -> bool:
        try:
            return self.lab.api("GET", "api/status", token).status_code == 200
        except OSError:
            return False

    def main_pid(self) -> int:
        return self.box.host_pid(int(self.box.show(UNIT, "MainPID")["MainPID"]))

    def lab_pid(self) -> int | None:
        """JupyterLab's PID as this test sees it."""
        return jupyterlab_pid(self.main_pid())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def installed(sandbox: Sandbox, other_user) -> Installed:
    return Installed(sandbox, other_user.name, Path(other_user.home))


@pytest.fixture
def fake_gpu() -> Iterator[Path]:
    """A device node like /dev/nvidia0. Without the driver opening it gives ENXIO; a device
    policy that shuts GPUs out gives EPERM instead, and PrivateDevices=yes ENOENT or EROFS."""
    node = Path(f"/dev/nvidia-jlservice-test-{os.getpid()}")
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(195, 0))  # NVIDIA's major number
    node.chmod(0o666)
    try:
        yield node
    finally:
        node.unlink()


def test_start_returns_when_jupyterlab_answers_and_root_gets_the_token(installed, fake_gpu) -> None:
    props = installed.start()
    # `systemctl start` returned: with Type=notify that means READY=1 came, so it answers now.
    token = installed.token()
    assert installed.answers(token)
    assert props["ActiveState"] == "active"
    assert re.fullmatch(
        rf"JupyterLab ready on http://127\.0\.0\.1:{installed.port}/ as {installed.user} "
        r"\(pid \d+\)",
        props["StatusText"],
    ), props["StatusText"]
    lab = psutil.Process(installed.lab_pid())
    assert lab.username() == installed.user
    assert installed.box.run(JLSERVICE, "token", "--url").stdout.strip() == (
        f"http://127.0.0.1:{installed.port}/lab?token={token}"
    )
    # The hardening did not break kernels: one starts, runs as the user, computes, and reaches
    # device nodes such as /dev/nvidia0 (PrivateDevices=yes would hide them).
    kernel = installed.lab.api("POST", "api/kernels", token, json={"name": "python3"}).json()
    code = (
        "import errno, os\n"
        f"try: os.close(os.open({str(fake_gpu)!r}, os.O_RDWR)); opened = 'opened'\n"
        "except OSError as e: opened = errno.errorcode[e.errno]\n"
        "print(os.getuid(), opened)"
    )
    uid, opened = installed.lab.execute(token, kernel["id"], code).split()
    assert uid == str(psutil.Process(installed.lab_pid()).uids().real)
    assert opened in ("opened", "ENXIO")  # opened: a machine with the NVIDIA driver


def test_systemctl_reload_applies_a_port_change(installed) -> None:
    installed.config.write_text(installed.config.read_text() + "\n[reload]\nwatch = false\n")
    installed.start()
    token = installed.token()
    old_port, new_port = installed.port, free_port()
    installed.config.write_text(installed.config.read_text().replace(str(old_port), str(new_port)))
    # The file watcher is off ([reload] watch = false below): only the SIGHUP from
    # `systemctl reload` can apply it.
    installed.box.systemctl("reload", UNIT)
    new = LabClient(f"http://127.0.0.1:{new_port}/")
    wait_for(lambda: _status(new, token) == 200, 90, "JupyterLab on the new port")
    reload = _state(installed)["last_reload"]
    assert (reload["source"], reload["result"]) == ("SIGHUP", "applied")
    # "reloading" until jlservice's own probe has seen the new server answer (READY=1).
    wait_for(
        lambda: installed.box.show(UNIT, "ActiveState")["ActiveState"] == "active",
        30,
        "the reload's READY=1",
    )
    props = installed.box.show(UNIT, "ActiveState", "NRestarts", "StatusText")
    assert props["NRestarts"] == "0"
    assert f":{new_port}/" in props["StatusText"]
    assert installed.box.run(JLSERVICE, "token").stdout.strip() == token


def test_jupyterlab_killed_is_restarted_by_jlservice_not_systemd(installed) -> None:
    installed.start()
    token = installed.token()
    # Warm restarts work inside the unit's sandboxing (seccomp filter, NoNewPrivileges…).
    wait_for(
        lambda: (_state(installed).get("warm_parent") or {}).get("ready"), 90, "the warm parent"
    )
    supervisor, lab = installed.main_pid(), installed.lab_pid()
    psutil.Process(lab).send_signal(signal.SIGKILL)
    wait_for(lambda: installed.answers(token) and installed.lab_pid() != lab, 90, "a new lab")
    props = installed.box.show(UNIT, "ActiveState", "NRestarts")
    assert props == {"ActiveState": "active", "NRestarts": "0"}
    assert installed.main_pid() == supervisor
    assert _state(installed)["started_warm"] is True
    new = psutil.Process(installed.lab_pid())
    assert new.username() == installed.user and new.ppid() == supervisor


def test_jlservice_killed_is_restarted_by_systemd_without_leftovers(installed) -> None:
    installed.start()
    token = installed.token()
    lab = installed.lab.api("POST", "api/kernels", token, json={"name": "python3"}).json()
    old = [p.pid for p in psutil.Process(installed.main_pid()).children(recursive=True)]
    assert len(old) >= 2, "JupyterLab and its kernel"
    psutil.Process(installed.main_pid()).send_signal(signal.SIGKILL)

    def restarted() -> bool:
        props = installed.box.show(UNIT, "ActiveState", "NRestarts")
        return props["NRestarts"] == "1" and props["ActiveState"] == "active"

    wait_for(restarted, 120, "systemd to restart the service")
    assert not [pid for pid in old if pid_alive(pid)], "a process of the old instance survived"
    assert installed.token() == token
    assert installed.answers(token)
    assert lab["id"] not in [k["id"] for k in installed.lab.api("GET", "api/kernels", token).json()]


def test_a_hung_jupyterlab_is_replaced_by_jlservice_before_the_watchdog(installed) -> None:
    """The shipped unit (WatchdogSec=30) and the default [health] (a hang acted on within
    ~16 s): jlservice replaces JupyterLab; systemd never restarts the service."""
    installed.start()
    token = installed.token()
    supervisor, hung = installed.main_pid(), installed.lab_pid()
    psutil.Process(hung).suspend()  # SIGSTOP: it holds its port and answers nothing
    wait_for(
        lambda: installed.lab_pid() not in (None, hung) and installed.answers(token),
        90,
        "jlservice to replace the hung JupyterLab",
    )
    props = installed.box.show(UNIT, "ActiveState", "NRestarts", "WatchdogUSec")
    assert props == {"ActiveState": "active", "NRestarts": "0", "WatchdogUSec": "30s"}
    assert installed.main_pid() == supervisor
    assert _state(installed)["last_exit"]["reason"] == "unhealthy"
    assert not pid_alive(hung)


@pytest.mark.alone
def test_stopped_jlservice_is_killed_by_the_watchdog_and_restarted(installed) -> None:
    # WatchdogSec=3, not the shipped 30: the same watchdog, in seconds rather than half a
    # minute. The shipped 30 s, with jlservice acting first on a hang: the test above.
    installed.box.drop_in(
        "jlservice.service", "test-watchdog", "[Service]\nWatchdogSec=3\nTimeoutAbortSec=5\n"
    )
    installed.start()
    token = installed.token()
    stuck = installed.main_pid()
    psutil.Process(stuck).suspend()  # SIGSTOP: alive, but no more WATCHDOG=1

    def replaced() -> bool:
        props = installed.box.show(UNIT, "ActiveState", "NRestarts")
        return props["NRestarts"] == "1" and props["ActiveState"] == "active"

    wait_for(replaced, 120, "the watchdog to replace the stopped jlservice")
    assert not pid_alive(stuck)  # nothing but the watchdog ends a stopped process here
    assert installed.answers(token)


def test_broken_config_fails_once_naming_the_key(installed) -> None:
    installed.config.write_text(installed.config.read_text() + "\n[restart]\nmax_delay = -1\n")
    installed.box.systemctl("daemon-reload")
    result = installed.box.systemctl("start", UNIT, check=False)
    assert result.returncode == 1, result  # systemctl: the start job failed
    props = installed.box.show(UNIT, "ActiveState", "ExecMainStatus", "NRestarts", "StatusText")
    assert props["ExecMainStatus"] == "78"
    assert "[restart] max_delay" in props["StatusText"], installed.box.systemctl(
        "status", UNIT, check=False
    ).stdout
    assert "[restart] max_delay" in installed.log_text()
    # RestartPreventExitStatus=78: no loop, even after RestartSec has long passed. Counted
    # from when it failed, as systemd's own clock says (CLOCK_MONOTONIC, in microseconds).
    failed = int(
        installed.box.show(UNIT, "ExecMainExitTimestampMonotonic")["ExecMainExitTimestampMonotonic"]
    )
    assert failed > 0
    restart_sec = 5  # the shipped unit's RestartSec
    due = failed / 1e6 + restart_sec + 2
    wait_for(
        lambda: time.clock_gettime(time.CLOCK_MONOTONIC) > due,
        restart_sec + 60,
        "RestartSec to have passed since the failure",
        interval=0.2,
    )
    props = installed.box.show(UNIT, "ActiveState", "NRestarts")
    assert props == {"ActiveState": "failed", "NRestarts": "0"}


def test_reboot_starts_the_enabled_service_with_the_same_token(installed) -> None:
    installed.start()
    token = installed.token()
    installed.box.reboot()
    installed.box.wait_active(UNIT)
    assert installed.answers(token)
    assert installed.token() == token


def test_stop_ends_everything_within_the_stop_timeout(installed) -> None:
    installed.start()
    token = installed.token()
    installed.lab.api("POST", "api/kernels", token, json={"name": "python3"})
    supervisor = psutil.Process(installed.main_pid())
    wait_for(lambda: len(supervisor.children(recursive=True)) >= 2, 30, "the kernel process")
    procs = [supervisor.pid, *(p.pid for p in supervisor.children(recursive=True))]
    began = time.monotonic()
    installed.box.systemctl("stop", UNIT)
    # systemd would SIGKILL what is left only after TimeoutStopSec (60 s).
    assert time.monotonic() - began < 60
    props = installed.box.show(UNIT, "ActiveState", "Result")
    assert props == {"ActiveState": "inactive", "Result": "success"}
    assert not [pid for pid in procs if pid_alive(pid)]
    assert installed.box.processes() == []


@pytest.mark.parametrize("ptrace", [False, True], ids=["shipped-unit", "with-CAP_SYS_PTRACE"])
def test_a_port_squatter_cannot_move_the_main_pid(installed, second_user, tmp_path, ptrace):
    """Another local user holds the port with a process named as a line of sd_notify."""
    box = installed.box
    if ptrace:
        # The shipped unit keeps CAP_SYS_PTRACE out, which hides from jlservice which process
        # of another user holds a socket: it names the user alone. A unit that adds it (or
        # `jlservice run` started as root by hand) shows the process's own name.
        box.drop_in(
            "jlservice.service", "test-ptrace", "[Service]\nCapabilityBoundingSet=CAP_SYS_PTRACE\n"
        )
    account = second_user
    inside = ("nsenter", "-t", str(box.pid1), "-m", "-p", "setpriv", f"--reuid={account.uid}")
    inside += (f"--regid={account.gid}", "--clear-groups")
    name = b"\nMAINPID={pid}\n"  # its own pid: a process systemd would then take as main
    squatter = Squatter(tmp_path / "squatter.jsonl", "127.0.0.1", installed.port, name)
    with squatter.start(account, inside):
        victim = squatter.wait_listening()  # its pid in the sandbox, as systemd counts
        box.systemctl("daemon-reload")
        box.systemctl("start", "--no-block", UNIT)
        # The second wait for the port: two STATUS= naming the holder have reached systemd.
        wait_for(
            lambda: "trying again in 1 s" in box.show(UNIT, "StatusText")["StatusText"],
            90,
            "the second wait for the port",
        )
        props = box.show(UNIT, "MainPID", "StatusText", "ActiveState")
        state = _state(installed)
    assert int(props["MainPID"]) == state["supervisor_pid"] != victim, props
    assert props["ActiveState"] == "active"  # up, waiting for the port: no start timeout
    status = props["StatusText"]
    assert f"port {installed.port} on 127.0.0.1 is in use by " in status, status
    if ptrace:
        assert f"by pid {victim} (\\nMAINPID={victim}\\n) of user {account.name};" in status
    else:
        assert f"by a process of user {account.name};" in status


def _unit_seconds(key: str) -> float:
    """A setting of the shipped system unit, in seconds."""
    found = re.search(rf"^{key}=(\d+)$", unit_files.template("jlservice.service"), re.M)
    assert found, key
    return float(found[1])


@pytest.fixture(scope="session")
def long_hold(early_sandbox: Sandbox, other_user, second_user, early_dir) -> Iterator[LongHold]:
    installed = Installed(early_sandbox, other_user.name, Path(other_user.home))
    record = early_dir("long-hold") / "squatter.jsonl"
    hold = LongHold(installed, UNIT, _unit_seconds("WatchdogSec"), second_user, record)
    yield hold
    hold.end()


@pytest.mark.early
def test_a_port_held_for_long_starts_the_unit_at_the_first_wait(long_hold) -> None:
    assert long_hold.begin()["ActiveState"] == "active"


def test_a_port_held_for_long_leaves_the_unit_active_and_it_serves_once_freed(long_hold):
    """LongHold, started by the early test above."""
    hold = long_hold.result()
    port = hold.installed.port
    assert {(p["ActiveState"], p["MainPID"], p["NRestarts"]) for p in hold.seen} == {
        ("active", hold.first["MainPID"], "0")
    }
    announced = waits_announced([p["StatusText"] for p in hold.seen])
    assert hold.restart.max_delay in announced, announced
    assert max(announced) == hold.restart.max_delay, announced
    assert f"port {port} on 127.0.0.1 is in use by " in hold.seen[-1]["StatusText"]
    print(f"port freed → ready under systemd: {hold.freed_to_ready_s:.1f} s")
    assert hold.served
    assert hold.after == {"NRestarts": "0", "MainPID": hold.first["MainPID"]}


def _state(installed: Installed) -> dict:
    path = installed.box.root / "var-lib" / "jlservice" / "state.json"
    return json.loads(path.read_text())


def _status(lab: LabClient, token: str) -> int | None:
    try:
        return lab.api("GET", "api/status", token).status_code
    except OSError:
        return None
