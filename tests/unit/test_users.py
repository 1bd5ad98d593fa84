"""users: may an account execute a file (directories, modes, #! interpreters)?"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from jlservice import users

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (files owned by others)")


def account(name: str) -> users.Account:
    found = users.lookup(name)
    assert found is not None, name
    return found


def script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.write_text(body)
    path.chmod(mode)
    return path


def really_runs(path: Path, user: str) -> bool:
    """What the kernel says: run `path` as `user` (the ground truth for execute_denied)."""
    who = account(user)
    try:
        result = subprocess.run(
            [str(path)],
            user=who.uid,
            group=who.gid,
            extra_groups=list(who.groups),
            capture_output=True,
            timeout=30,
            cwd="/",
        )
    except PermissionError:
        return False
    return result.returncode == 0


def test_lookup_and_current() -> None:
    me = users.current()
    entry = pwd.getpwuid(os.geteuid())
    assert (me.name, me.uid, me.gid, me.home) == (
        entry.pw_name,
        entry.pw_uid,
        entry.pw_gid,
        entry.pw_dir,
    )
    assert me.gid in me.groups
    assert me.is_root == (os.geteuid() == 0)
    assert users.lookup("no-such-user-jls") is None


def test_root_may_execute_an_executable(tmp_path: Path) -> None:
    root = account("root")
    assert users.execute_denied("/bin/sh", root) is None
    assert users.execute_denied(script(tmp_path / "run.sh", "#!/bin/sh\n"), root) is None


def test_root_may_not_execute_a_file_without_x_bits(tmp_path: Path) -> None:
    why = users.execute_denied(script(tmp_path / "data", "#!/bin/sh\n", 0o644), account("root"))
    assert why is not None and "not executable" in why


def test_relative_path_is_refused() -> None:
    assert users.execute_denied("bin/sh", account("root")) is not None


def test_missing_file(tmp_path: Path) -> None:
    why = users.execute_denied(tmp_path / "nope", account("root"))
    assert why is not None and str(tmp_path / "nope") in why


def test_directory_is_not_executable(tmp_path: Path) -> None:
    why = users.execute_denied(tmp_path, account("root"))
    assert why is not None and "not a regular file" in why


def test_nobody_may_run_bin_sh() -> None:
    assert users.execute_denied("/bin/sh", account("nobody")) is None


@needs_root
def test_nobody_may_run_a_script_in_an_open_directory(open_dir: Path) -> None:
    path = script(open_dir / "ok.sh", "#!/bin/sh\nexit 0\n")
    assert users.execute_denied(path, account("nobody")) is None
    assert really_runs(path, "nobody")


@needs_root
def test_nobody_blocked_by_a_0700_directory(open_dir: Path) -> None:
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    path = script(private / "jupyter-lab", "#!/bin/sh\nexit 0\n")
    why = users.execute_denied(path, account("nobody"))
    assert why is not None
    assert str(private) in why and "0700" in why
    assert not really_runs(path, "nobody")


@needs_root
def test_nobody_blocked_by_an_interpreter_in_a_0700_directory(open_dir: Path) -> None:
    """The classic: a venv made from a Python under /root (mode 0700)."""
    private = open_dir / "root-home"
    private.mkdir(mode=0o700)
    python = script(private / "python3", "#!/bin/sh\nexit 0\n")
    path = script(open_dir / "jupyter-lab", f"#!{python}\nprint('hi')\n")
    why = users.execute_denied(path, account("nobody"))
    assert why is not None and str(private) in why
    assert not really_runs(path, "nobody")


@needs_root
def test_nobody_blocked_through_a_symlink(open_dir: Path) -> None:
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    target = script(private / "python3", "#!/bin/sh\nexit 0\n")
    link = open_dir / "python"
    link.symlink_to(target)
    assert users.execute_denied(link, account("nobody")) is not None
    assert not really_runs(link, "nobody")


@needs_root
def test_nobody_cannot_run_a_script_it_cannot_read(open_dir: Path) -> None:
    path = script(open_dir / "secret.sh", "#!/bin/sh\nexit 0\n", 0o711)
    why = users.execute_denied(path, account("nobody"))
    assert why is not None and "read" in why
    assert not really_runs(path, "nobody")


@needs_root
def test_nobody_may_run_a_binary_it_cannot_read(open_dir: Path) -> None:
    """A compiled program needs only the x bit."""
    path = open_dir / "true"
    path.write_bytes(Path("/bin/true").read_bytes())
    path.chmod(0o711)
    assert users.execute_denied(path, account("nobody")) is None
    assert really_runs(path, "nobody")


@needs_root
def test_owner_bits_win_over_other_bits(open_dir: Path) -> None:
    """The kernel checks the owner's bits for the owner, even if 'other' could run it."""
    nobody = account("nobody")
    path = script(open_dir / "odd.sh", "#!/bin/sh\nexit 0\n", 0o075)
    os.chown(path, nobody.uid, 0)
    assert users.execute_denied(path, nobody) is not None
    assert not really_runs(path, "nobody")


@needs_root
def test_group_bits_apply_to_group_members(open_dir: Path) -> None:
    nobody = account("nobody")
    path = script(open_dir / "group.sh", "#!/bin/sh\nexit 0\n", 0o750)
    os.chown(path, 0, nobody.gid)
    assert users.execute_denied(path, nobody) is None
    assert really_runs(path, "nobody")


def test_shebang_with_a_missing_interpreter(tmp_path: Path) -> None:
    path = script(tmp_path / "broken", "#!/no/such/python\n")
    why = users.execute_denied(path, account("root"))
    assert why is not None and why.startswith("/no")


def test_shebang_with_a_relative_interpreter(tmp_path: Path) -> None:
    path = script(tmp_path / "broken", "#!python3\n")
    assert users.execute_denied(path, account("root")) is not None


def test_shebang_with_arguments(tmp_path: Path) -> None:
    path = script(tmp_path / "env-style", "#!/usr/bin/env python3\n")
    assert users.execute_denied(path, account("root")) is None


def test_shebang_loop_ends(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    script(a, f"#!{b}\n")
    script(b, f"#!{a}\n")
    result = users.execute_denied(a, account("root"))  # exec() would fail with ELOOP
    assert result is not None and "too many levels" in result


def test_interpreter_that_is_a_symlink_loop(tmp_path: Path) -> None:
    """A broken install: the #! interpreter is a symlink loop. A reason, not a crash."""
    loop = tmp_path / "python3"
    loop.symlink_to(loop)
    path = script(tmp_path / "jupyter-lab", f"#!{loop}\n")
    why = users.execute_denied(path, account("root"))
    assert why is not None and str(loop) in why


def _entry(name: str, uid: int, shell: str) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, "", f"/home/{name}", shell))


def test_people_are_accounts_from_uid_1000_or_with_a_login_shell(monkeypatch) -> None:
    entries = [
        _entry("root", 0, "/bin/bash"),
        _entry("daemon", 1, "/usr/sbin/nologin"),
        _entry("sync", 4, "/bin/sync"),
        _entry("postgres", 105, "/bin/bash"),  # a system account one can log in as
        _entry("lab", 1000, "/bin/bash"),
        _entry("ann", 1001, "/usr/sbin/nologin"),
        _entry("nobody", 65534, "/usr/sbin/nologin"),
    ]
    monkeypatch.setattr(pwd, "getpwall", lambda: entries)
    monkeypatch.setattr(users, "_login_shells", lambda: {"/bin/sh", "/bin/bash"})
    assert users.people(but=1000) == ["postgres", "ann"]
    assert users.people(but=1001) == ["postgres", "lab"]


def test_login_shells_leave_out_nologin() -> None:
    shells = users._login_shells()
    assert not any(s.endswith(("/nologin", "/false")) for s in shells)
    if Path("/etc/shells").exists():
        assert "/bin/sh" in shells


# --- files the lab user can swap -----------------------------------------------------------

# As the owner of the command's directory: swap the command between a script and a FIFO,
# as fast as it can, until killed.
_SWAPPER = """
import os, sys
os.chdir(sys.argv[1])
while True:
    for source in ("script", "fifo"):
        if os.path.lexists("swap"):  # renaming a link onto the same file leaves it there
            os.unlink("swap")
        os.link(source, "swap")
        os.rename("swap", "jupyter-lab")
"""
_CHECKER = """
import json, sys, time
from jlservice import users
verdicts, until = set(), time.monotonic() + 3
while time.monotonic() < until:
    verdicts.add(users.execute_denied(sys.argv[1], users.current()))
print(json.dumps(sorted(map(str, verdicts))))
"""


def test_a_command_swapped_for_a_fifo_never_hangs_the_check(open_dir: Path) -> None:
    """Root reads the command's #! line; opened without O_NONBLOCK, a FIFO swapped in after
    the regular-file check would block it forever (no writer ever comes)."""
    script(open_dir / "script", "#!/bin/sh\nexit 0\n")
    os.mkfifo(open_dir / "fifo", 0o644)
    os.link(open_dir / "script", open_dir / "jupyter-lab")
    as_user = {}
    if IS_ROOT:
        nobody = account("nobody")
        for path in (open_dir, *open_dir.iterdir()):
            os.chown(path, nobody.uid, nobody.gid, follow_symlinks=False)
        as_user = {"user": nobody.uid, "group": nobody.gid, "extra_groups": []}
    swapper = subprocess.Popen([sys.executable, "-c", _SWAPPER, str(open_dir)], cwd="/", **as_user)
    try:
        checked = subprocess.run(
            [sys.executable, "-c", _CHECKER, str(open_dir / "jupyter-lab")],
            capture_output=True,
            text=True,
            timeout=30,  # it checks for 3 s
        )
    except subprocess.TimeoutExpired:
        pytest.fail("checking a command that is swapped for a FIFO hung")
    finally:
        swapping = swapper.poll() is None
        swapper.kill()
        swapper.wait()
    assert swapping, "the swapper stopped: the check raced nothing"
    assert checked.returncode == 0, checked.stderr
    # It saw both while they were swapped: the script, and the FIFO (turned down, unopened).
    fifo_refused = f"{open_dir / 'jupyter-lab'} is not a regular file"
    assert json.loads(checked.stdout) == sorted(["None", fifo_refused])


def test_a_fifo_as_the_command_is_refused_at_once(open_dir: Path) -> None:
    fifo = open_dir / "jupyter-lab"  # removed after the test: a FIFO left in /tmp hangs readers
    os.mkfifo(fifo, 0o755)
    config = open_dir / "jlservice.toml"
    lab = f"[lab]\ncommand = [{str(fifo)!r}]\nnotebook_dir = {str(open_dir)!r}\n"
    config.write_text(lab + ("allow_root = true\n" if IS_ROOT else ""))
    checked = subprocess.run(
        [sys.executable, "-m", "jlservice", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 78
    assert f"[lab] command: user {users.current().name} cannot execute {fifo}" in checked.stderr
    assert f"{fifo} is not a regular file" in checked.stderr


@needs_root
def test_others_can_change_a_path_through_a_directory_of_theirs(open_dir: Path) -> None:
    nobody = account("nobody")
    safe = open_dir / "safe"
    safe.mkdir(mode=0o755)
    (safe / "key.pem").write_text("k")
    assert users.others_can_change(safe / "key.pem") is None
    assert users.others_can_change(safe / "missing") is None  # reading it will say so

    theirs = open_dir / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, nobody.uid, nobody.gid)
    (theirs / "key.pem").write_text("k")  # root's file, in nobody's directory
    assert users.others_can_change(theirs / "key.pem") == f"{theirs} is writable by nobody"
    # A link of root's, in root's directory, into theirs: the target is checked too.
    (safe / "link.pem").symlink_to(theirs / "key.pem")
    assert users.others_can_change(safe / "link.pem") == f"{theirs} is writable by nobody"


@needs_root
@pytest.mark.parametrize(
    ("mode", "group", "entry_of_nobody", "writer"),
    [
        (0o777, 0, False, "everyone"),
        (0o775, 65534, False, "group 65534"),
        (0o775, 0, False, None),  # root's group: root's own
        (0o1777, 0, False, None),  # sticky, like /tmp: others cannot swap root's entries
        (0o1777, 0, True, "everyone"),  # …but the entry's owner can
    ],
)
def test_others_can_change_a_path_through_an_open_directory(
    open_dir: Path, mode: int, group: int, entry_of_nobody: bool, writer: str | None
) -> None:
    shared = open_dir / "shared"
    shared.mkdir()
    shared.chmod(mode)
    os.chown(shared, 0, group)
    key = shared / "key.pem"
    key.write_text("k")
    if entry_of_nobody:
        os.chown(key, account("nobody").uid, -1)
    expected = f"{shared} is writable by {writer}" if writer else None
    assert users.others_can_change(key) == expected
