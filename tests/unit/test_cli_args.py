"""The command line as a user meets it: usage errors, --help, and token/status on a state dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlservice import login, procfs, state

COMMANDS = {
    "run": "Start JupyterLab",
    "token": "login token",
    "status": "Exit status",
    "check-config": "Validate the configuration",
    "reload": "re-read its configuration",
}
TOKEN = "0123456789abcdef" * 4


def jls(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m jlservice ARGS` with an environment free of the caller's jlservice settings."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"JLSERVICE_CONFIG", "NOTIFY_SOCKET", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"}
    }
    return subprocess.run(
        [sys.executable, "-m", "jlservice", *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
        cwd="/",
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("jlservice: "), result.stderr
    return result.stderr


def assert_usage_error(result: subprocess.CompletedProcess[str], usage: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"usage: {usage}"), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# --- usage errors ------------------------------------------------------------------------


def test_no_command() -> None:
    result = jls()
    assert_usage_error(result, "jlservice")
    assert "required" in result.stderr


def test_unknown_command() -> None:
    result = jls("frobnicate")
    assert_usage_error(result, "jlservice")
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_unknown_option() -> None:
    result = jls("token", "--bogus")
    assert_usage_error(result, "jlservice")
    assert "--bogus" in result.stderr


def test_url_and_rotate_exclude_each_other() -> None:
    result = jls("token", "--url", "--rotate")
    assert_usage_error(result, "jlservice token")
    assert "not allowed with" in result.stderr


def test_config_needs_a_value() -> None:
    assert_usage_error(jls("status", "--config"), "jlservice status")


# --- help --------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "describes"), COMMANDS.items())
def test_sub_command_help(command: str, describes: str) -> None:
    result = jls(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: jlservice {command}")
    assert describes in " ".join(result.stdout.split())
    assert "--config" in result.stdout


def test_top_level_help_lists_the_commands() -> None:
    result = jls("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_token_help_lists_its_options() -> None:
    out = jls("token", "--help").stdout
    assert "--url" in out and "--rotate" in out


def test_version() -> None:
    from jlservice import __version__

    result = jls("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"jlservice {__version__}"


# --- token and status --------------------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def config_file(tmp_path: Path, state_dir: Path) -> Path:
    """[service] only, plus a [lab] so broken that only load_service() can read the file."""
    path = tmp_path / "jlservice.toml"
    path.write_text(
        f'[lab]\nport = "not a port"\nprot = 1\n[service]\nstate_dir = "{state_dir}"\n'
        f'runtime_dir = "{state_dir}/run"\n'
    )
    return path


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A process that stands in for a running supervisor."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def write_state(state_dir: Path, pid: int | None, started: float | None, **changes) -> None:
    state.write_state(
        state_dir,
        state.State(
            token=TOKEN,
            url="http://127.0.0.1:9999/jupyter/",
            ip="127.0.0.1",
            port=9999,
            base_url="/jupyter/",
            user="nobody",
            notebook_dir="/srv/notebooks",
            config_path=None,
            supervisor_pid=pid,
            supervisor_started_at=started,
            status=state.READY,
            lab_pid=pid,
            **changes,
        ),
    )


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_token_without_state(config_file: Path, state_dir: Path) -> None:
    message = assert_one_line_failure(jls("token", "--config", str(config_file)), 1)
    assert "no state" in message and str(state_dir) in message


def test_token_when_supervisor_is_dead(config_file: Path, state_dir: Path) -> None:
    write_state(state_dir, dead_pid(), time.time() - 10)
    message = assert_one_line_failure(jls("token", "--config", str(config_file)), 3)
    assert "not running" in message
    assert TOKEN not in message


def test_token_when_supervisor_runs(config_file: Path, state_dir: Path, live_pid: int) -> None:
    write_state(state_dir, live_pid, procfs.start_time(live_pid))
    result = jls("token", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout == TOKEN + "\n"
    result = jls("token", "--url", "--config", str(config_file))
    assert result.stdout == f"http://127.0.0.1:9999/jupyter/lab?token={TOKEN}\n"


def test_token_when_the_pid_was_reused(config_file: Path, state_dir: Path, live_pid: int) -> None:
    started = procfs.start_time(live_pid)
    assert started is not None
    write_state(state_dir, live_pid, started - 3600)
    assert_one_line_failure(jls("token", "--config", str(config_file)), 3)


def test_token_finds_the_config_through_the_environment(
    config_file: Path, state_dir: Path, live_pid: int
) -> None:
    write_state(state_dir, live_pid, procfs.start_time(live_pid))
    result = jls("token", JLSERVICE_CONFIG=str(config_file))
    assert result.stdout == TOKEN + "\n", result.stderr


def test_config_option_before_the_command(
    config_file: Path, state_dir: Path, live_pid: int
) -> None:
    """`jlservice --config F token`: the top-level --config (shown in --help) must count."""
    write_state(state_dir, live_pid, procfs.start_time(live_pid))
    result = jls("--config", str(config_file), "token")
    assert result.returncode == 0, result.stderr
    assert result.stdout == TOKEN + "\n"


def test_token_with_a_damaged_state_file(config_file: Path, state_dir: Path) -> None:
    (state_dir / state.STATE_FILE).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    message = assert_one_line_failure(jls("token", "--config", str(config_file)), 1)
    assert str(state_dir) in message


def test_token_with_a_truncated_state_file(config_file: Path, state_dir: Path) -> None:
    (state_dir / state.STATE_FILE).write_text('{"token": "abc", ')
    message = assert_one_line_failure(jls("token", "--config", str(config_file)), 1)
    assert "damaged" in message


def test_token_with_a_missing_config_file(tmp_path: Path) -> None:
    message = assert_one_line_failure(jls("token", "--config", str(tmp_path / "nope.toml")), 78)
    assert "no such file" in message


def test_rotate_when_not_running(config_file: Path, state_dir: Path) -> None:
    write_state(state_dir, dead_pid(), time.time() - 10)
    result = jls("token", "--rotate", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    new = result.stdout.strip()
    assert new != TOKEN and len(new) >= 48
    assert login.load_or_create_token(state_dir) == new  # what the next start uses
    assert stat.S_IMODE((state_dir / login.TOKEN_FILE).stat().st_mode) == 0o600
    secret = state_dir / login.COOKIE_SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_bytes()) >= 32


def test_status_when_not_running(config_file: Path, state_dir: Path) -> None:
    write_state(state_dir, dead_pid(), time.time() - 10)
    result = jls("status", "--config", str(config_file))
    assert result.returncode == 3, result.stderr
    assert "not running" in result.stdout
    assert TOKEN not in result.stdout + result.stderr


def test_status_when_running(config_file: Path, state_dir: Path, live_pid: int) -> None:
    write_state(state_dir, live_pid, procfs.start_time(live_pid), restarts=2)
    result = jls("status", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert f"running (pid {live_pid}" in result.stdout
    assert "restarts:    2" in result.stdout
    assert TOKEN not in result.stdout


@pytest.mark.parametrize("running", [True, False])
def test_status_json(config_file: Path, state_dir: Path, live_pid: int, running: bool) -> None:
    pid = live_pid if running else dead_pid()
    write_state(state_dir, pid, procfs.start_time(pid) or time.time())
    result = jls("status", "--json", "--config", str(config_file))
    assert result.returncode == (0 if running else 3)
    report = json.loads(result.stdout)
    assert report["running"] is running
    assert report["port"] == 9999
    assert TOKEN not in result.stdout
    assert TOKEN[:16] not in result.stdout


def test_status_without_state(config_file: Path) -> None:
    message = assert_one_line_failure(jls("status", "--config", str(config_file)), 1)
    assert "no state" in message
