"""The lab user cannot crash or stall the root supervisor with what root reads: the warm
parent's answers, JupyterLab's API, a nested or huge configuration file, a damaged
state.json. Each is a broken answer (logged, retired, rejected), never a supervisor exit."""

from __future__ import annotations

import os
import signal
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers.procs import free_port, pid_alive, wait_for
from helpers.service import IS_ROOT

from jlservice import users

DEEP_TOML = "deep = " + "[" * 50_000 + "]" * 50_000 + "\n"


def _events(svc, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


def _listener(port: int) -> int | None:
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            return conn.pid
    return None


def _owned_dir(path: Path, account: users.Account) -> Path:
    path.mkdir()
    path.chmod(0o755)
    os.chown(path, account.uid, account.gid)
    return path


def _write_as(account: users.Account, path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text))
    os.chown(path, account.uid, account.gid)


# The lab user's code in JupyterLab's interpreter (here through a directory of theirs on
# PYTHONPATH; as well a .pth file in their site-packages, or a venv they own): in the warm
# parent it replaces every answer to a fork request by the Python expression `reply`.
def _lying_warm_parent(reply: str) -> str:
    return """\
    import json, os, socket, sys

    if sys.argv[:1] == ["-c"] and '"socket"' in sys.argv[-1]:  # the warm parent's spec
        _send = socket.socket.send

        def send(self, data, *args):
            try:
                pid = json.loads(data).get("pid")
            except Exception:
                pid = None
            if pid not in (None, os.getpid()):  # the pid of a server it forked
                data = REPLY
            return _send(self, data, *args)

        socket.socket.send = send
""".replace("REPLY", reply)


DEEP_REPLY = _lying_warm_parent('b"[" * 30000 + b"]" * 30000')  # JSON nested 30,000 deep


def _warm_service_with(service_factory, user, lib: Path):
    """A started jlservice, warm, for `user`, whose Python imports what `lib` holds."""
    svc = service_factory(
        lab={"user": user.name, "env": {"PYTHONPATH": str(lib)}},
        restart={"warm": True},
    )
    svc.wait_warm = True
    svc.notebooks.chmod(0o755)
    os.chown(svc.notebooks, user.uid, user.gid)
    return svc.start()


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_a_warm_parent_answering_deep_json_is_retired(service_factory, other_user, tmp_path):
    jupyter_lab = str(Path(sys.executable).parent / "jupyter-lab")
    assert users.execute_denied(jupyter_lab, other_user) is None
    lib = _owned_dir(tmp_path / "userlib", other_user)
    _write_as(other_user, lib / "sitecustomize.py", DEEP_REPLY)
    svc = _warm_service_with(service_factory, other_user, lib)

    for crash in (1, 2):  # the next warm parent is as hostile: every restart stays cold
        old = svc.lab_pid
        os.kill(old, signal.SIGKILL)
        state = svc.wait_ready(not_pid=old)  # raises if jlservice exited
        assert state["started_warm"] is False
        broken = _events(svc, "warm_parent_broken")
        assert len(broken) == crash and "nested deeper than 32 levels" in broken[-1]["problem"]
        # Whatever the warm parent forked meanwhile was swept: the server on the port is
        # the cold one jlservice started, at its first attempt.
        assert _listener(svc.port) == state["lab_pid"]
        assert not _events(svc, "lab_start_failed") and not _events(svc, "lab_exited")[crash:]

    token = svc.cli("token").stdout.strip()
    kernel_id, _ = svc.start_kernel(token)
    assert svc.execute(token, kernel_id, "print(6 * 7)").strip() == "42"
    assert svc.proc.poll() is None


# The server it forked, as the warm parent names it: itself, a child of the supervisor
# running as the lab user.
OWN_PID_REPLY = _lying_warm_parent('json.dumps({"pid": os.getpid()}).encode()')


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_a_warm_parent_naming_itself_as_the_server_is_retired(
    service_factory, other_user, tmp_path
):
    """Taken for the server, the warm parent's own watch would be replaced: its exit never
    noticed, its pid spared by every sweep and, once reused by another process, killed."""
    lib = _owned_dir(tmp_path / "userlib", other_user)
    _write_as(other_user, lib / "sitecustomize.py", OWN_PID_REPLY)
    svc = _warm_service_with(service_factory, other_user, lib)
    liar = svc.state()["warm_parent"]["pid"]

    old = svc.lab_pid
    os.kill(old, signal.SIGKILL)
    state = svc.wait_ready(not_pid=old)
    assert state["started_warm"] is False and state["lab_pid"] != liar
    (broken,) = _events(svc, "warm_parent_broken")
    assert broken["problem"] == f"reported pid {liar}"
    wait_for(lambda: not pid_alive(liar), 10, "the lying warm parent ended and reaped")
    assert _listener(svc.port) == state["lab_pid"]  # what it forked meanwhile was swept
    retired = [e["pid"] for e in _events(svc, "warm_parent_retired")]
    assert liar in retired
    assert svc.proc.poll() is None


def _watched_inodes(pid: int) -> set[int]:
    """The inodes that the inotify descriptors of `pid` watch (from /proc/PID/fdinfo)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:  # closed meanwhile
            continue
        for line in info.splitlines():
            if line.startswith("inotify "):
                fields = dict(f.split(":", 1) for f in line.split()[1:] if ":" in f)
                inodes.add(int(fields["ino"], 16))
    return inodes


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
def test_root_watches_no_directory_the_lab_user_cannot_read(service_factory, other_user, tmp_path):
    private = tmp_path / "private"  # root's own: the lab user cannot list it
    private.mkdir(mode=0o700)
    lib = _owned_dir(tmp_path / "userlib", other_user)
    # The warm parent reports the directories on its sys.path: the lab user names root's.
    _write_as(
        other_user,
        lib / "sitecustomize.py",
        f"""\
        import sys
        if sys.argv[:1] == ["-c"]:
            sys.path.append({str(private)!r})
        """,
    )
    svc = _warm_service_with(service_factory, other_user, lib)

    def watched() -> set[int]:  # by root or by the warm parent
        return _watched_inodes(svc.proc.pid) | _watched_inodes(svc.state()["warm_parent"]["pid"])

    site_packages = Path(sysconfig.get_paths()["purelib"]).stat().st_ino
    wait_for(lambda: site_packages in watched(), 30, "the warm parent's site-packages watched")
    assert private.stat().st_ino not in watched()


# A server extension of the lab user's that makes GET api/kernels answer an object.
GARBAGE_KERNELS = """\
    from jupyter_server.base.handlers import APIHandler


    class Garbage(APIHandler):
        def get(self):
            self.finish('{"kernels": "not a list"}')


    def _jupyter_server_extension_points():
        return [{"module": "jlstest_garbage_kernels"}]


    def _load_jupyter_server_extension(app):
        base = app.web_app.settings["base_url"]
        app.web_app.add_handlers(".*$", [(base + "api/kernels", Garbage)])
"""


def test_an_idle_reload_ends_at_max_wait_when_kernels_are_unknown(service_factory, tmp_path):
    ext = tmp_path / "ext"
    (ext / "config").mkdir(parents=True)
    (ext / "jlstest_garbage_kernels.py").write_text(textwrap.dedent(GARBAGE_KERNELS))
    (ext / "config" / "jupyter_server_config.json").write_text(
        '{"ServerApp": {"jpserver_extensions": {"jlstest_garbage_kernels": true}}}'
    )
    ext.chmod(0o755)
    svc = service_factory(
        lab={"env": {"PYTHONPATH": str(ext), "JUPYTER_CONFIG_PATH": str(ext / "config")}},
        # Unknown kernels may be busy: the restart waits all of max_wait, 300 s by default.
        reload={"when": "idle", "max_wait": 8},
    )
    svc.start()
    token = svc.cli("token").stdout.strip()
    assert svc.api("GET", "api/kernels", token).json() == {"kernels": "not a list"}
    lab = svc.lab_pid

    svc.sections["lab"]["port"] = svc.port = free_port()
    svc.write_config()
    wait_for(
        lambda: "state is unknown" in (svc.state().get("reload_pending") or ""),
        30,
        "the reload to wait for kernels whose state is unknown",
    )
    assert svc.lab_pid == lab
    asked = time.monotonic()
    state = svc.wait_ready(not_pid=lab, timeout=60)
    assert state["reload_pending"] is None and state["port"] == svc.port
    assert time.monotonic() - asked < 8 + 30  # by max_wait (and a slow machine's start)
    assert len(_events(svc, "reload_kernels_unknown")) == 1  # not once a second
    assert svc.api("GET", "api/contents", token).status_code == 200


def test_a_deeply_nested_config_is_one_line_and_exit_78(service):
    service.write_config(DEEP_TOML)
    result = service.cli("check-config")
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"jlservice: {service.config_path}: tables and arrays nested deeper than 32 levels "
        "(no setting needs that)"
    ]

    service.write_config("#" * (8 << 20))  # 8 MB: refused before it is parsed
    start = time.monotonic()
    result = service.cli("check-config")
    assert result.returncode == 78 and time.monotonic() - start < 30
    assert result.stderr.splitlines() == [
        f"jlservice: {service.config_path}: larger than 1 MiB: not a jlservice configuration "
        "file (check the path)"
    ]


def test_reloading_a_deeply_nested_config_is_rejected_and_keeps_serving(service):
    service.start()
    token = service.cli("token").stdout.strip()
    lab = service.lab_pid
    good = service.config_path.read_text()

    service.config_path.write_text(good + DEEP_TOML)
    wait_for(lambda: _events(service, "config_rejected"), 30, "the reload to be rejected")
    state = service.state()
    assert "nested deeper than 32 levels" in state["config_error"]
    assert service.proc.poll() is None
    assert state["status"] == "ready" and state["lab_pid"] == lab
    assert service.api("GET", "api/contents", token).status_code == 200

    service.config_path.write_text(good)
    wait_for(lambda: _events(service, "config_reloaded"), 30, "the fixed file to reload")
    assert service.state()["config_error"] is None and service.lab_pid == lab


@pytest.mark.parametrize(
    "content",
    [b"[" * 100_000 + b"]" * 100_000, b'{"token": "' + b"x" * (4 << 20) + b'"}', b"\x00garbage"],
    ids=["deep", "huge", "garbage"],
)
def test_a_damaged_state_file_is_one_line_and_rewritten(service, content: bytes):
    service.state_dir.mkdir(mode=0o700)
    state_file = service.state_dir / "state.json"
    state_file.write_bytes(content)
    for command in ("status", "token"):
        result = service.cli(command)
        assert result.returncode == 1, result
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert f"{state_file} is damaged" in result.stderr
        assert "restart jlservice to rewrite it" in result.stderr

    service.start()
    token = service.cli("token").stdout.strip()
    assert len(token) >= 48
    assert service.api("GET", "api/contents", token).status_code == 200
