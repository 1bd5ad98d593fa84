"""What the lab user controls never gets it more than its own rights: not the credentials of
the lab user after it, not a directory root can enter and it cannot, not root's state."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import textwrap
from pathlib import Path

import psutil
import pytest
import requests
from helpers.procs import wait_for
from helpers.service import IS_ROOT, PYTHON

from jlservice import users

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")


def as_user(account: users.Account, code: str, check: bool = True) -> str:
    """Run Python `code` as `account` (what a notebook of theirs could do); its output."""
    done = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code)],
        user=account.uid,
        group=account.gid,
        extra_groups=[],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 or not check, done.stderr
    return done.stdout


def events(svc, name: str) -> list[dict]:
    return [e for e in svc.log_events() if e.get("event") == name]


# ── a new lab user ───────────────────────────────────────────────────────────


@pytest.mark.parametrize("how", ["reload", "restart"])
def test_a_new_lab_user_never_gets_the_old_ones_credentials(
    service_factory, other_user, second_user, tmp_path, how
):
    """The old lab user could read the token and cookie secret its JupyterLab was given,
    and wrote what it liked in its runtime dir: none of that reaches the new one."""
    svc = service_factory(lab={"user": other_user.name})
    svc.notebooks.chmod(0o755)  # both users can enter it
    svc.start()
    old_token = svc.cli("token").stdout.strip()
    browser = requests.Session()  # logged in with the token, then by its cookie
    assert svc.api("GET", f"lab?token={old_token}", session=browser).status_code == 200
    assert svc.api("GET", "api/contents", session=browser).status_code == 200
    runtime = Path(psutil.Process(svc.lab_pid).environ()["JUPYTER_RUNTIME_DIR"])
    roots = tmp_path / "roots"
    roots.mkdir(mode=0o755)
    keep = roots / "keep.txt"
    keep.write_text("root's\n")
    keep.chmod(0o644)
    as_user(
        other_user,
        f"""
        import os
        os.chdir({str(runtime)!r})
        open("left-behind.txt", "w").write("the old user was here")
        os.symlink({str(keep)!r}, "to-a-root-file")
        os.symlink({str(roots)!r}, "to-a-root-dir")
        """,
    )

    svc.sections["lab"]["user"] = second_user.name
    if how == "reload":  # the file watch applies it
        old_pid = svc.lab_pid
        svc.write_config()
        svc.wait_ready(not_pid=old_pid)
    else:  # an install for another user over the kept state
        svc.signal(signal.SIGTERM)
        assert svc.wait_exit(timeout=60) == 0
        svc.write_config()
        svc.start()
    assert psutil.Process(svc.lab_pid).uids().real == second_user.uid

    new_token = svc.cli("token").stdout.strip()
    assert new_token != old_token
    assert svc.api("GET", "api/contents", new_token).status_code == 200
    assert svc.api("GET", "api/contents", old_token).status_code == 403
    assert svc.api("GET", "api/contents", session=browser).status_code == 403
    assert svc.state()["lab_uid"] == second_user.uid
    changed = events(svc, "lab_user_changed")
    assert len(changed) == 1
    assert changed[0]["old"] == f"{other_user.name} (uid {other_user.uid})"
    assert changed[0]["new"] == f"{second_user.name} (uid {second_user.uid})"
    assert "token and cookie secret rotated" in changed[0]["effect"]

    left = {"left-behind.txt", "to-a-root-file", "to-a-root-dir"} & set(os.listdir(runtime))
    assert not left, f"the old user's {left} handed to the new one"
    assert runtime.stat().st_uid == second_user.uid
    # Removed, not followed: what the links pointed at is untouched.
    assert [p.name for p in roots.iterdir()] == ["keep.txt"]
    assert keep.read_text() == "root's\n"
    assert (keep.stat().st_uid, stat.S_IMODE(keep.stat().st_mode)) == (0, 0o644)


def test_the_same_lab_user_keeps_its_login_across_restarts(service_factory, other_user):
    """The rotation is for a new user only: a restart keeps everyone logged in."""
    svc = service_factory(lab={"user": other_user.name})
    svc.notebooks.chmod(0o755)
    svc.start()
    token = svc.cli("token").stdout.strip()
    browser = requests.Session()
    assert svc.api("GET", f"lab?token={token}", session=browser).status_code == 200
    svc.signal(signal.SIGTERM)
    assert svc.wait_exit(timeout=60) == 0
    svc.start()
    assert svc.cli("token").stdout.strip() == token
    assert svc.api("GET", "api/contents", session=browser).status_code == 200
    assert not events(svc, "lab_user_changed")


# ── paths the lab user controls ──────────────────────────────────────────────


def test_notebook_dir_swapped_for_a_link_is_entered_as_the_lab_user(
    service_factory, other_user, second_user, tmp_path
):
    """The lab user owns the directory its notebook dir is in, so it can swap the notebook
    dir for a link to another user's directory behind a 0700 one. Entered with root's
    rights, that would become the new JupyterLab's cwd, readable through /proc/PID/cwd."""
    private = tmp_path / "second-users-private"
    private.mkdir(mode=0o700)
    docs = private / "docs"
    docs.mkdir(mode=0o755)
    secret = docs / "secret.txt"
    secret.write_text("the second user's secret\n")
    secret.chmod(0o644)
    for path in (private, docs, secret):
        os.chown(path, second_user.uid, second_user.gid)
    space = tmp_path / "lab-users-space"
    notebooks = space / "notebooks"
    for path in (space, notebooks):
        path.mkdir(mode=0o755)
        os.chown(path, other_user.uid, other_user.gid)
    svc = service_factory(lab={"user": other_user.name, "notebook_dir": str(notebooks)})
    svc.start()
    old = svc.lab_pid
    read_secret = f"print(open({str(secret)!r}).read())"
    assert as_user(other_user, read_secret, check=False) == ""  # it cannot, by itself

    as_user(
        other_user,
        f"""
        import os
        os.rename({str(notebooks)!r}, {str(notebooks)!r} + ".moved")
        os.symlink({str(docs)!r}, {str(notebooks)!r})
        os.kill({old}, 9)  # its own JupyterLab: jlservice starts a new one
        """,
    )
    entered: set[str] = set()
    leaked: list[str] = []

    def refused_or_entered() -> bool:
        if svc.proc.poll() is not None:
            return True
        for proc in psutil.Process(svc.proc.pid).children(recursive=True):
            if proc.pid == old:
                continue
            try:
                cwd = os.readlink(f"/proc/{proc.pid}/cwd")
            except OSError:
                continue
            entered.add(cwd)
            if cwd == str(docs):
                through = f"print(open('/proc/{proc.pid}/cwd/secret.txt').read())"
                leaked.append(as_user(other_user, through, check=False))
                return True
        return False

    wait_for(refused_or_entered, 120, "jlservice to start JupyterLab again", interval=0.01)
    assert str(docs) not in entered, "JupyterLab was started in the other user's directory"
    assert not any(leaked), leaked
    assert svc.wait_exit(timeout=60) == 78  # a configuration problem, said clearly
    (failed,) = events(svc, "lab_start_failed")
    assert failed["problem"] == (
        f"user {other_user.name} cannot enter notebook_dir {notebooks}: Permission denied; "
        f"give {other_user.name} access or fix [lab] notebook_dir"
    )
    assert failed["problem"] in svc.state()["last_error"]


def test_notebook_dir_the_lab_user_cannot_enter_is_a_clear_error(
    service_factory, other_user, tmp_path
):
    notebooks = tmp_path / "roots-only"
    notebooks.mkdir(mode=0o700)
    svc = service_factory(lab={"user": other_user.name, "notebook_dir": str(notebooks)})
    svc.start(wait=False)
    assert svc.wait_exit(timeout=60) == 78
    assert svc.state()["last_error"] == (
        f"user {other_user.name} cannot enter notebook_dir {notebooks}: Permission denied; "
        f"give {other_user.name} access or fix [lab] notebook_dir"
    )


@pytest.mark.parametrize("which", ["state_dir", "runtime_dir"])
def test_a_directory_of_another_user_is_refused(service_factory, other_user, which):
    """The lab user made jlservice's directory before it did (or an earlier jlservice ran as
    that user): it could have planted a token, a cookie secret or links in it."""
    svc = service_factory(lab={"user": other_user.name})
    directory = Path(svc.sections["service"][which])
    directory.mkdir(mode=0o700)
    os.chown(directory, other_user.uid, other_user.gid)
    svc.start(wait=False)
    assert svc.wait_exit(timeout=60) == 78
    assert (
        f"jlservice: [service] {which}: {directory} belongs to {other_user.name}, not root, "
        "who may have left files or links in it: remove it (jlservice makes a new one) or "
        "choose another directory"
    ) in svc.log_text().splitlines()
    assert directory.stat().st_uid == other_user.uid  # not taken over either
    if which == "state_dir":  # nor is the TLS key written into it
        cert = svc.cli("cert")
        assert cert.returncode == 1 and "belongs to" in cert.stderr
        assert list(directory.iterdir()) == []


def test_a_state_dir_others_can_write_is_refused(service):
    service.state_dir.mkdir(mode=0o777)
    service.state_dir.chmod(0o777)
    service.start(wait=False)
    assert service.wait_exit(timeout=60) == 78
    assert (
        f"jlservice: [service] state_dir: {service.state_dir} is writable by others "
        f"(mode 0777), who may have left files or links in it: check what is in it, then "
        f"`chmod go-w {service.state_dir}`"
    ) in service.log_text().splitlines()
    assert not (service.state_dir / "state.json").exists()


def test_tls_files_the_lab_user_could_swap_are_refused(service_factory, other_user, tmp_path):
    """The admin keeps the certificate and key in a directory of the lab user's. Root reads
    them and hands the key to JupyterLab: swapped for links to another service's pair, they
    would give that user a key it cannot read itself."""
    from jlservice.admin import tls

    elsewhere = tmp_path / "another-service"
    elsewhere.mkdir(mode=0o700)
    cert_pem, key_pem = tls.self_signed(["127.0.0.1"], 30)
    (elsewhere / "cert.pem").write_bytes(cert_pem)
    (elsewhere / "key.pem").write_bytes(key_pem)
    (elsewhere / "key.pem").chmod(0o600)
    theirs = tmp_path / "lab-users-tls"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, other_user.uid, other_user.gid)
    as_user(
        other_user,
        f"""
        import os
        os.symlink({str(elsewhere / "cert.pem")!r}, {str(theirs / "cert.pem")!r})
        os.symlink({str(elsewhere / "key.pem")!r}, {str(theirs / "key.pem")!r})
        """,
    )
    svc = service_factory(
        lab={"user": other_user.name},
        tls={"certfile": str(theirs / "cert.pem"), "keyfile": str(theirs / "key.pem")},
    )
    svc.notebooks.chmod(0o755)
    checked = svc.cli("check-config")
    assert checked.returncode == 78
    assert checked.stderr.strip() == (
        f"jlservice: {svc.config_path}: [tls] certfile: {theirs / 'cert.pem'}: {theirs} is "
        f"writable by {other_user.name}; move it where no other user can change it"
    )
    svc.start(wait=False)
    assert svc.wait_exit(timeout=60) == 78
    assert not list(tmp_path.rglob("tls.key"))  # never handed to JupyterLab
