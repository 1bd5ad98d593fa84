"""jlservice as root runs JupyterLab, its kernels and their files as the configured user."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers.service import IS_ROOT, WARM_AND_COLD, WARM_ONLY

from jlservice import users

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
# WARM_AND_COLD: a restart that root prepares for, forked from the warm parent or cold.
# WARM_ONLY: the tests where a warm parent runs as the user beside JupyterLab; nothing
# restarts, and the first start is cold either way, so [restart] warm = false would see a
# subset of the same processes. The others see only the first start, with the default.


@pytest.fixture
def user_service(service_factory, other_user):
    why = users.execute_denied(str(Path(sys.executable).parent / "jupyter-lab"), other_user)
    assert why is None, (
        f"the test venv must be usable by other users ({why}); make it outside "
        "/root from Debian's python3, as tests/run.sh does"
    )
    svc = service_factory(lab={"user": other_user.name})
    svc.notebooks.chmod(0o755)
    os.chown(svc.notebooks, other_user.uid, other_user.gid)
    return svc


@WARM_ONLY
def test_lab_kernels_and_files_belong_to_the_user(user_service, other_user):
    svc = user_service.start()
    lab = psutil.Process(svc.lab_pid)
    assert lab.uids().real == lab.uids().effective == other_user.uid
    assert lab.gids().real == other_user.gid
    environ = lab.environ()
    assert environ["HOME"] == other_user.home
    assert environ["USER"] == environ["LOGNAME"] == other_user.name
    assert environ["SHELL"] == "/bin/bash"
    assert Path(lab.cwd()) == svc.notebooks

    token = svc.cli("token").stdout.strip()
    kernel_id, kernel_pid = svc.start_kernel(token)
    assert psutil.Process(kernel_pid).uids().real == other_user.uid
    out = svc.execute(
        token,
        kernel_id,
        "import os\n"
        "open('made-by-kernel.txt', 'w').write('hi')\n"
        "print(os.getuid(), os.getgid(), os.getcwd())",
    )
    uid, gid, cwd = out.split()
    assert (int(uid), int(gid)) == (other_user.uid, other_user.gid)
    assert Path(cwd) == svc.notebooks
    created = svc.notebooks / "made-by-kernel.txt"
    assert created.stat().st_uid == other_user.uid
    assert stat.S_IMODE(created.stat().st_mode) == 0o600  # the 0077 umask

    # Notebooks created through the contents API belong to the user too.
    made = svc.api("POST", "api/contents", token, json={"type": "notebook"})
    assert made.status_code == 201
    assert (svc.notebooks / made.json()["path"]).stat().st_uid == other_user.uid

    # The token file JupyterLab reads is the user's, and nobody else's.
    token_file = Path(environ["JUPYTER_TOKEN_FILE"])
    assert token_file.stat().st_uid == other_user.uid
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # Its directory stays root's, so the user cannot swap what root writes there.
    assert token_file.parent.stat().st_uid == 0
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o711


@WARM_AND_COLD
def test_lab_user_cannot_make_root_follow_a_symlink(user_service, other_user, tmp_path):
    """From a kernel, the user tries to swap the runtime dir for a link to a root directory."""
    svc = user_service.start()
    environ = psutil.Process(svc.lab_pid).environ()
    runtime = Path(environ["JUPYTER_RUNTIME_DIR"])
    target = tmp_path / "roots-own"
    target.mkdir(mode=0o755)
    token = svc.cli("token").stdout.strip()
    kernel_id, _ = svc.start_kernel(token)
    out = svc.execute(
        token,
        kernel_id,
        f"""
import os, shutil
try:
    shutil.rmtree({str(runtime)!r})
    os.symlink({str(target)!r}, {str(runtime)!r})
    print("swapped")
except OSError as exc:
    print("refused", exc.errno)
""",
    )
    assert out.startswith("refused"), out
    old = svc.lab_pid
    os.kill(old, 9)  # a restart makes root prepare the directory again
    svc.wait_ready(not_pid=old)
    assert target.stat().st_uid == 0 and stat.S_IMODE(target.stat().st_mode) == 0o755
    assert runtime.is_dir() and not runtime.is_symlink()


def test_state_file_is_not_readable_by_the_lab_user(user_service, other_user):
    svc = user_service.start()
    denied = svc.cli("token", user=other_user.name)
    assert denied.returncode == 1  # README: 1 if the state file is missing or unreadable
    assert "permission denied" in denied.stderr
    assert "Traceback" not in denied.stderr
    assert len(denied.stderr.strip().splitlines()) == 1


def test_command_the_user_cannot_execute_is_refused(service_factory, other_user, tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    script = private / "jupyter-lab"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    svc = service_factory(lab={"user": other_user.name, "command": [str(script)]})
    os.chown(svc.notebooks, other_user.uid, other_user.gid)
    result = svc.cli("check-config")
    assert result.returncode == 78
    assert f"user {other_user.name} cannot execute {script}" in result.stderr
    assert f"{private} is mode 0700" in result.stderr
    svc.start(wait=False)
    assert svc.wait_exit(timeout=30) == 78

    # The same trap one level down: a script whose interpreter the user cannot reach.
    public = tmp_path / "public"
    public.mkdir(mode=0o755)
    wrapper = public / "jupyter-lab"
    wrapper.write_text(f"#!{script}\n")
    wrapper.chmod(0o755)
    svc.sections["lab"]["command"] = [str(wrapper)]
    svc.write_config()
    result = svc.cli("check-config")
    assert result.returncode == 78
    assert f"{private} is mode 0700" in result.stderr


def test_non_root_cannot_run_lab_as_someone_else(tmp_path, other_user):
    config = tmp_path / "jlservice.toml"
    config.write_text('[lab]\nuser = "root"\n')
    config.chmod(0o644)
    result = subprocess.run(
        [sys.executable, "-m", "jlservice", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        user=other_user.name,
        cwd="/",
    )
    assert result.returncode == 78
    assert f"jlservice runs as {other_user.name}, not root" in result.stderr


@WARM_ONLY
def test_password_and_https_for_another_user(user_service, other_user):
    """The hash and the key stay root's 0600 files; the lab user gets its own copies."""
    svc = user_service
    assert svc.cli("cert").returncode == 0
    assert svc.cli("password", "--stdin", input="s3cret\n").returncode == 0
    svc.sections["tls"] = {"certfile": str(svc.state_dir / "tls.crt")}
    svc.start()
    assert svc.api("GET", "api").status_code == 200  # https, certificate verified
    assert svc.api("GET", "api/contents", session=svc.login("s3cret")).status_code == 200
    private = Path(psutil.Process(svc.lab_pid).environ()["JUPYTER_TOKEN_FILE"]).parent
    for name in ("config/jupyter_server_config.json", "tls.crt", "tls.key"):
        info = (private / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (other_user.uid, 0o600), name
    for name in ("password", "tls.key"):
        info = (svc.state_dir / name).stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600), name
