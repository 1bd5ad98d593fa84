"""launcher: the argv and environment JupyterLab gets, its private files, the port check."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
from pathlib import Path

import pytest
from helpers.launch import build, make_config

from jlservice import config, errors, net
from jlservice.start import cold, launcher, private_dir

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
TOKEN = "f00dfeed" * 8

SYSTEMD_ENV = {
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "JUPYTER_TOKEN": TOKEN,
    "JUPYTER_TOKEN_FILE": "/root/token",
    "JUPYTER_RUNTIME_DIR": "/root/.local/share/jupyter/runtime",
    "JUPYTER_NO_CONFIG": "1",  # would hide jlservice's password and extensions
    "JOURNAL_STREAM": "8:1234",
    "INVOCATION_ID": "abc",
    "STATE_DIRECTORY": "/var/lib/jlservice",
}
NEVER_INHERITED = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JUPYTER_TOKEN",
    "JUPYTER_NO_CONFIG",
)


# --- argv --------------------------------------------------------------------------------


def test_argv_pins_address_and_directory(tmp_path: Path) -> None:
    launch = build(tmp_path, ip="::1", base_url="jupyter")
    argv = launch.argv
    assert argv[0] == config.default_command()[0]
    assert "--ServerApp.port_retries=0" in argv
    assert "--ServerApp.port=9123" in argv
    assert "--ServerApp.ip=::1" in argv
    assert "--ServerApp.base_url=/jupyter/" in argv
    assert f"--ServerApp.root_dir={tmp_path / 'notebooks'}" in argv
    assert "--ServerApp.open_browser=False" in argv
    assert (launch.ip, launch.port, launch.cwd) == ("::1", 9123, str(tmp_path / "notebooks"))


def test_token_never_on_the_command_line(tmp_path: Path) -> None:
    launch = build(tmp_path, environ={**SYSTEMD_ENV, "PATH": "/usr/bin"})
    command_line = " ".join(launch.argv)
    assert TOKEN not in command_line
    assert "--ServerApp.token" not in command_line
    assert "--IdentityProvider.token" not in command_line
    assert not any(a.startswith("--ServerApp.cookie_secret=") for a in launch.argv)


def test_command_arguments_come_first(tmp_path: Path) -> None:
    launch = build(tmp_path, command=["/bin/sh", "-c", 'exec jupyter-lab "$@"', "lab"])
    assert launch.argv[:4] == ("/bin/sh", "-c", 'exec jupyter-lab "$@"', "lab")
    assert launch.argv[4].startswith("--")


def test_options_render_as_flags(tmp_path: Path) -> None:
    options = {
        "ServerApp.allow_origin": "https://example.org",
        "ServerApp.max_body_size": 1024,
        "ServerApp.terminals_enabled": False,
        "MappingKernelManager.cull_idle_timeout": 0.5,
        "ServerApp.allow_origin_pat": ["a", "b"],
        "ServerApp.jpserver_extensions": {"ext_one": True, "ext.two": False},
    }
    argv = build(tmp_path, options=options).argv
    assert "--ServerApp.allow_origin=https://example.org" in argv
    assert "--ServerApp.max_body_size=1024" in argv
    assert "--ServerApp.terminals_enabled=False" in argv
    assert "--MappingKernelManager.cull_idle_timeout=0.5" in argv
    assert [a for a in argv if a.startswith("--ServerApp.allow_origin_pat=")] == [
        "--ServerApp.allow_origin_pat=a",
        "--ServerApp.allow_origin_pat=b",
    ]
    assert [a for a in argv if a.startswith("--ServerApp.jpserver_extensions=")] == [
        "--ServerApp.jpserver_extensions=ext_one=True",
        "--ServerApp.jpserver_extensions=ext.two=False",
    ]


def test_the_notices_are_loaded_under_any_settings(tmp_path: Path) -> None:
    """A kernel's OOM kill is told in JupyterLab whatever [kernels] says: the server extension
    that registers the event, on PYTHONPATH from the private dir and enabled by a config file
    there (first on JUPYTER_CONFIG_PATH, which jupyter_server merges with the user's own), and
    the labextension that shows it, first on JUPYTER_PATH; nothing on the command line."""
    environ = {"PATH": "/usr/bin:/bin", "JUPYTER_PATH": "/u/share", "JUPYTER_CONFIG_PATH": "/u/e"}
    cfg = make_config(tmp_path, {"kernels": {"survive_restarts": False}})
    launch = launcher.build(cfg, environ=environ)
    assert not launch.keep_kernels and not launch.environments
    assert not [a for a in launch.argv if "extensions" in a]
    assert launch.env["PYTHONPATH"] == str(launch.inlab_dir)
    config_dir = launch.private_dir / launcher.CONFIG_DIR
    assert launch.env["JUPYTER_CONFIG_PATH"] == f"{config_dir}:/u/e"
    assert launch.env["JUPYTER_PATH"] == f"{launcher.LABEXTENSIONS}:/u/share"
    labextension = launcher.LABEXTENSIONS / "labextensions" / "jlservice" / "package.json"
    assert json.loads(labextension.read_text())["name"] == "jlservice"
    private_dir.prepare_private_dir(launch, tmp_path / "run", TOKEN, b"c" * 64)
    module = launch.inlab_dir / "jlservice_notices.py"
    assert module.read_bytes() == (private_dir.INLAB / "notices.py").read_bytes()
    assert sorted(p.name for p in launch.inlab_dir.iterdir()) == ["jlservice_notices.py"]
    enabled = json.loads(launch.extensions_config.read_text())
    assert enabled == {"ServerApp": {"jpserver_extensions": {"jlservice_notices": True}}}
    assert launch.extensions_config.stat().st_mode & 0o777 == 0o644


def test_jlservices_server_extensions_follow_the_kernels_settings(tmp_path: Path) -> None:
    kernels = {"survive_restarts": True, "environments": ["/opt/conda"]}
    launch = launcher.build(make_config(tmp_path, {"kernels": kernels}), environ={})
    private_dir.prepare_private_dir(launch, tmp_path / "run", TOKEN, b"c" * 64)
    enabled = json.loads(launch.extensions_config.read_text())["ServerApp"]["jpserver_extensions"]
    assert enabled == dict.fromkeys(
        ["jlservice_listening", "jlservice_kernelspecs", "jlservice_notices"], True
    )


def test_options_come_after_the_pinned_flags(tmp_path: Path) -> None:
    argv = build(tmp_path, options={"ServerApp.allow_origin": "*"}).argv
    assert argv.index("--ServerApp.allow_origin=*") > argv.index("--ServerApp.port_retries=0")


def test_cookie_name_depends_on_the_state_dir(tmp_path: Path) -> None:
    def cookie(launch: launcher.Launch) -> str:
        (flag,) = [a for a in launch.argv if a.startswith("--IdentityProvider.cookie_name=")]
        return flag

    one = tmp_path / "one"
    two = tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    assert cookie(build(one)) == cookie(build(one))
    assert cookie(build(one, port=9999)) == cookie(build(one))  # survives a port change
    assert cookie(build(one)) != cookie(build(two))


def test_launches_compare_by_value(tmp_path: Path) -> None:
    assert build(tmp_path) == build(tmp_path)
    assert build(tmp_path) != build(tmp_path, port=9124)
    assert build(tmp_path) != build(tmp_path, env={"X": "1"})


# --- environment -------------------------------------------------------------------------


def test_private_files_inside_runtime_dir(tmp_path: Path) -> None:
    launch = build(tmp_path)
    lab_dir = tmp_path / "run" / "lab"
    assert Path(launch.env["JUPYTER_TOKEN_FILE"]) == launch.token_file
    assert Path(launch.env["JUPYTER_RUNTIME_DIR"]) == launch.jupyter_runtime_dir
    assert launch.token_file.parent == lab_dir
    assert launch.jupyter_runtime_dir.parent == lab_dir
    assert f"--ServerApp.cookie_secret_file={lab_dir / 'cookie_secret'}" in launch.argv


@pytest.mark.parametrize("user", ["self", "nobody"])
def test_systemd_and_token_variables_never_inherited(tmp_path: Path, user: str) -> None:
    if user == "nobody" and not IS_ROOT:
        pytest.skip("switching user needs root")
    lab = {"user": "nobody", "notebook_dir": str(tmp_path)} if user == "nobody" else {}
    launch = build(tmp_path, environ={**SYSTEMD_ENV, "PATH": "/usr/bin"}, **lab)
    for name in NEVER_INHERITED:
        assert name not in launch.env, name
    assert TOKEN not in " ".join(launch.env.values())
    assert launch.env["JUPYTER_TOKEN_FILE"] == str(launch.token_file)
    assert "JOURNAL_STREAM" not in launch.env


def test_same_user_keeps_the_rest_of_the_environment(tmp_path: Path) -> None:
    launch = build(tmp_path, environ={"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert not launch.switch_user


@needs_root
def test_other_user_gets_a_clean_environment(tmp_path: Path) -> None:
    environ = {
        "PATH": "/usr/sbin:/usr/bin",
        "LANG": "de_DE.UTF-8",
        "LC_TIME": "C",
        "SSH_AUTH_SOCK": "/tmp/ssh-root/agent",
        "AWS_SECRET_ACCESS_KEY": "root-only",
        "HOME": "/root",
        "USER": "root",
    }
    launch = build(tmp_path, environ=environ, user="nobody", notebook_dir=str(tmp_path))
    nobody = pwd.getpwnam("nobody")
    assert launch.switch_user
    assert launch.account.uid == nobody.pw_uid
    assert "SSH_AUTH_SOCK" not in launch.env
    assert "AWS_SECRET_ACCESS_KEY" not in launch.env
    assert launch.env["LANG"] == "de_DE.UTF-8" and launch.env["LC_TIME"] == "C"
    assert launch.env["HOME"] == nobody.pw_dir
    assert launch.env["USER"] == launch.env["LOGNAME"] == "nobody"
    assert launch.env["SHELL"] == (nobody.pw_shell or "/bin/sh")
    assert "--ServerApp.allow_root=True" not in launch.argv


def test_identity_variables_come_from_the_password_database(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.geteuid())
    environ = {"PATH": "/usr/bin", "HOME": "/wrong", "USER": "wrong", "LOGNAME": "wrong"}
    launch = build(tmp_path, environ=environ)
    assert launch.env["HOME"] == me.pw_dir
    assert launch.env["USER"] == launch.env["LOGNAME"] == me.pw_name
    assert launch.env["SHELL"] == (me.pw_shell or "/bin/sh")


@needs_root
def test_root_lab_gets_allow_root(tmp_path: Path) -> None:
    assert "--ServerApp.allow_root=True" in build(tmp_path).argv


def test_lab_env_is_applied_last(tmp_path: Path) -> None:
    env = {"OMP_NUM_THREADS": "4", "LANG": "en_GB.UTF-8", "HOME": "/srv/home"}
    launch = build(tmp_path, environ={"PATH": "/usr/bin", "LANG": "C"}, env=env)
    assert launch.env["OMP_NUM_THREADS"] == "4"
    assert launch.env["LANG"] == "en_GB.UTF-8"
    assert launch.env["HOME"] == "/srv/home"


def test_command_directory_is_on_path(tmp_path: Path) -> None:
    launch = build(tmp_path, environ={"PATH": "/usr/bin:/bin"})
    bindir = os.path.dirname(launch.argv[0])
    assert launch.env["PATH"].split(os.pathsep)[0] == bindir
    assert launch.env["PATH"].endswith("/usr/bin:/bin")


def test_path_has_a_default(tmp_path: Path) -> None:
    launch = build(tmp_path, environ={})
    assert "/usr/bin" in launch.env["PATH"].split(os.pathsep)


def test_build_does_not_touch_the_given_environ(tmp_path: Path) -> None:
    environ = {**SYSTEMD_ENV, "PATH": "/usr/bin"}
    before = dict(environ)
    build(tmp_path, environ=environ)
    assert environ == before


def test_umask_is_passed_on(tmp_path: Path) -> None:
    assert build(tmp_path, umask="0027").umask == 0o027


# --- private directory -------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_prepare_private_dir(tmp_path: Path) -> None:
    launch = build(tmp_path)
    runtime = tmp_path / "run"
    private_dir.prepare_private_dir(launch, runtime, TOKEN, b"c" * 64)
    assert launch.token_file.read_bytes() == TOKEN.encode()  # no trailing newline
    assert launch.cookie_secret_file.read_bytes() == b"c" * 64
    assert _mode(launch.token_file) == 0o600
    assert _mode(launch.cookie_secret_file) == 0o600
    assert _mode(launch.private_dir) == 0o700
    assert _mode(launch.jupyter_runtime_dir) == 0o700
    private_dir.prepare_private_dir(launch, runtime, "e" * 64, b"d" * 64)  # a rotation
    assert launch.token_file.read_text() == "e" * 64


@needs_root
def test_prepare_private_dir_for_another_user(tmp_path: Path) -> None:
    launch = build(tmp_path, user="nobody", notebook_dir=str(tmp_path))
    private_dir.prepare_private_dir(launch, tmp_path / "run", TOKEN, b"c" * 64)
    nobody = pwd.getpwnam("nobody")
    for path in (launch.jupyter_runtime_dir, launch.token_file, launch.cookie_secret_file):
        assert path.stat().st_uid == nobody.pw_uid, path
    assert _mode(launch.token_file) == 0o600
    # The directory holding them stays root's: nobody cannot swap its entries for symlinks.
    assert launch.private_dir.stat().st_uid == 0 and _mode(launch.private_dir) == 0o711
    assert _mode(tmp_path / "run") == 0o755  # nobody must get through to its own dir


@needs_root
def test_a_new_lab_user_gets_a_runtime_dir_of_its_own(tmp_path: Path) -> None:
    """What the previous lab user left in JupyterLab's runtime dir goes, links without
    following them; the same user keeps its files."""
    old = build(tmp_path, user="nobody", notebook_dir=str(tmp_path))
    private_dir.prepare_private_dir(old, tmp_path / "run", TOKEN, b"c" * 64)
    runtime = old.jupyter_runtime_dir
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o755)
    (roots / "keep").write_text("root's")
    (runtime / "left").write_text("x")
    (runtime / "sub").mkdir()
    (runtime / "sub" / "deep").write_text("y")
    (runtime / "to-file").symlink_to(roots / "keep")
    (runtime / "to-dir").symlink_to(roots)

    new = build(tmp_path, user="daemon", notebook_dir=str(tmp_path))
    private_dir.prepare_private_dir(new, tmp_path / "run", TOKEN, b"c" * 64)
    assert list(runtime.iterdir()) == []
    assert runtime.stat().st_uid == pwd.getpwnam("daemon").pw_uid
    assert [p.name for p in roots.iterdir()] == ["keep"]
    assert (roots / "keep").read_text() == "root's"

    (runtime / "mine").write_text("m")
    private_dir.prepare_private_dir(new, tmp_path / "run", TOKEN, b"c" * 64)
    assert (runtime / "mine").exists()


@needs_root
@pytest.mark.parametrize("through_a_link", [False, True], ids=["dir", "link"])
def test_the_notebook_dir_is_entered_as_the_lab_user(
    tmp_path: Path, open_dir: Path, through_a_link: bool
) -> None:
    """Entered with root's rights, a dir the user cannot enter (or a link to one) would
    become the server's cwd; entered as the user it is a clear LaunchError."""
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    notebooks = private
    if through_a_link:
        notebooks = open_dir / "notebooks-link"
        notebooks.symlink_to(private)
    launch = build(
        tmp_path, user="nobody", notebook_dir=str(notebooks), command=["/bin/sh", "-c", "pwd"]
    )
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(errors.LaunchError) as refused:
        cold.popen(launch)
    assert str(refused.value) == (
        f"user nobody cannot enter notebook_dir {notebooks}: Permission denied; "
        "give nobody access or fix [lab] notebook_dir"
    )
    assert len(os.listdir("/proc/self/fd")) == fds  # no pipe left open

    private.chmod(0o755)  # now nobody may enter it: the server starts there
    proc = cold.popen(launch)
    out, _ = proc.communicate(timeout=30)
    assert out.decode().strip() == str(private)


# --- port check --------------------------------------------------------------------------


def test_check_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        problem = net.check_port("127.0.0.1", port)
    assert problem is not None
    assert f"port {port}" in problem and "in use" in problem


def test_check_port_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert net.check_port("127.0.0.1", port) is None


def test_check_port_in_use_on_all_addresses() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        assert "in use" in (net.check_port("127.0.0.1", port) or "")


def test_check_port_address_not_on_this_machine() -> None:
    problem = net.check_port("192.0.2.123", 8888)  # TEST-NET-1, never local
    assert problem is not None and "192.0.2.123" in problem


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_check_port_ipv6() -> None:
    try:
        held = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        held.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 not configured")
    with held:
        held.listen()
        port = held.getsockname()[1]
        assert "in use" in (net.check_port("::1", port) or "")
