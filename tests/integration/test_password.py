"""Password login: `jlservice password` → JupyterLab's real login form accepts it."""

from __future__ import annotations

import os
import pty
import select
import stat
import time

import psutil
from helpers.procs import pid_alive
from helpers.service import PYTHON, files_exposing

PASSWORD = "correct horse battery staple"


def _set_password(svc, password: str):
    return svc.cli("password", "--stdin", input=password + "\n")


def _contents(svc, session) -> int:
    return svc.api("GET", "api/contents", session=session).status_code


def test_password_login_and_token_both_work(service_factory):
    svc = service_factory()
    result = _set_password(svc, PASSWORD)
    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout
    hash_file = svc.state_dir / "password"
    assert stat.S_IMODE(hash_file.stat().st_mode) == 0o600
    assert hash_file.read_text().startswith("argon2:")
    # The configuration now names the file; the hash itself is not in it.
    assert f'password_file = "{hash_file}"' in svc.config_path.read_text()
    svc.start()

    good = svc.login(PASSWORD)
    assert _contents(svc, good) == 200
    wrong = svc.login("not the password")
    assert _contents(svc, wrong) == 403
    token = svc.cli("token").stdout.strip()
    assert svc.api("GET", "api/contents", token).status_code == 200

    # The password is in no file, no log line and no command line.
    roots = [svc.root]
    assert not files_exposing(PASSWORD, roots)
    for path in svc.root.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    for proc in psutil.process_iter(["cmdline"]):
        assert PASSWORD not in " ".join(proc.info["cmdline"] or []), proc.pid
    # Nor is the hash on JupyterLab's command line (it reads it from a 0600 file).
    hashed = hash_file.read_text().strip()
    assert hashed not in " ".join(psutil.Process(svc.lab_pid).cmdline())


def test_changing_the_password_applies_through_reload(service_factory):
    svc = service_factory()
    assert _set_password(svc, PASSWORD).returncode == 0
    svc.start()
    before = svc.lab_pid
    old_session = svc.login(PASSWORD)
    assert _contents(svc, old_session) == 200

    result = _set_password(svc, "a new one")
    assert result.returncode == 0, result.stderr
    assert "JupyterLab restarted" in result.stdout
    # The command returned once the new server answered.
    state = svc.state()
    assert state["status"] == "ready" and state["lab_pid"] not in (None, before)
    assert pid_alive(state["lab_pid"]) and not pid_alive(before)
    assert svc.api("GET", "api").status_code == 200

    assert _contents(svc, svc.login("a new one")) == 200
    assert _contents(svc, svc.login(PASSWORD)) == 403
    # The login cookie is bound to the password: the old session is logged out.
    assert _contents(svc, old_session) == 403


def test_password_file_problems_are_config_errors(service_factory):
    svc = service_factory()
    assert _set_password(svc, PASSWORD).returncode == 0
    hash_file = svc.state_dir / "password"
    hash_file.chmod(0o644)
    result = svc.cli("check-config")
    assert result.returncode == 78
    assert result.stderr.strip().endswith(
        f"is mode 0644, readable by others: `chmod 600 {hash_file}`"
    )
    hash_file.unlink()
    result = svc.cli("check-config")
    assert result.returncode == 78
    assert "[auth] password_file" in result.stderr and "jlservice password" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_password_refuses_an_empty_one(service):
    result = _set_password(service, "")
    assert result.returncode == 1
    assert result.stderr == "jlservice: an empty password is not allowed; nothing changed\n"
    assert not (service.state_dir / "password").exists()


def _talk(svc, answers: list[str]) -> tuple[int, str]:
    """Run `jlservice password` on a terminal of its own, typing `answers` at its prompts."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty, as for a person at a keyboard
        os.execv(PYTHON, [PYTHON, "-m", "jlservice", "password", "--config", str(svc.config_path)])
    screen = b""
    deadline = time.monotonic() + 120

    def read_more() -> bool:
        nonlocal screen
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"no answer from `jlservice password`; screen: {screen!r}")
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child closed the terminal
            return False
        screen += chunk
        return bool(chunk)

    try:
        for prompt, answer in zip((b"New password: ", b"Repeat it: "), answers, strict=True):
            # getpass turns echo off before it prints the prompt: typing after it is safe.
            while prompt not in screen:
                assert read_more(), screen
            screen = screen.replace(prompt, prompt.strip() + b"\n", 1)
            os.write(fd, answer.encode() + b"\n")
        while read_more():
            pass
    finally:
        os.close(fd)
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return status, screen.decode(errors="replace")


def test_password_is_asked_twice_without_echo(service):
    status, screen = _talk(service, ["typed-secret-1", "typed-secret-2"])
    assert status == 1
    assert "New password:" in screen and "Repeat it:" in screen
    assert "the passwords differ; nothing changed" in screen
    assert "typed-secret" not in screen  # nothing typed was echoed
    assert not (service.state_dir / "password").exists()

    status, screen = _talk(service, ["typed-secret-3", "typed-secret-3"])
    assert status == 0, screen
    assert "typed-secret" not in screen
    assert (service.state_dir / "password").read_text().startswith("argon2:")


def test_token_off_leaves_the_password_as_the_only_login(service_factory):
    svc = service_factory(auth={"token": False})
    assert _set_password(svc, PASSWORD).returncode == 0
    svc.start()
    token = svc.state()["token"]  # jlservice keeps one; JupyterLab must not take it
    assert svc.api("GET", "api/contents", token).status_code == 403
    assert svc.api("GET", f"lab?token={token}", allow_redirects=False).status_code != 200
    assert svc.api("GET", "api/contents").status_code == 403
    assert _contents(svc, svc.login(PASSWORD)) == 200
    printed = svc.cli("token")
    assert printed.returncode == 1 and token not in printed.stdout + printed.stderr
    assert "- token: token login is off ([auth] token = false)" in svc.cli("doctor").stdout
