"""state: atomic 0600 writes, the state file round trip, its errors, tokens, liveness."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from jlservice import files, login, procfs, state

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")


def sample_state(**changes: object) -> state.State:
    base = state.State(
        token="ab" * 32,
        url="http://127.0.0.1:8888/",
        ip="127.0.0.1",
        port=8888,
        base_url="/",
        user="alice",
        notebook_dir="/srv/notebooks",
        config_path="/etc/jlservice/jlservice.toml",
        supervisor_pid=None,
        supervisor_started_at=None,
    )
    return base.evolve(**changes)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- write_atomic ------------------------------------------------------------------------


def test_write_atomic_is_0600_even_with_umask_0(tmp_path: Path, permissive_umask) -> None:
    path = tmp_path / "secret"
    files.write_atomic(path, b"data")
    assert mode_of(path) == 0o600
    assert path.read_bytes() == b"data"


def test_write_atomic_tightens_an_existing_file(tmp_path: Path, permissive_umask) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    path.chmod(0o666)
    files.write_atomic(path, b"new")
    assert mode_of(path) == 0o600
    assert path.read_bytes() == b"new"


def test_write_atomic_honours_a_given_mode(tmp_path: Path, permissive_umask) -> None:
    path = tmp_path / "public"
    files.write_atomic(path, b"x", mode=0o644)
    assert mode_of(path) == 0o644


def test_write_atomic_replaces_rather_than_rewrites(tmp_path: Path) -> None:
    """A reader that opened the old file keeps seeing the whole old content."""
    path = tmp_path / "state.json"
    files.write_atomic(path, b"old content")
    with path.open("rb") as reader:
        files.write_atomic(path, b"new")
        assert reader.read() == b"old content"
    assert path.read_bytes() == b"new"


def test_write_atomic_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    for i in range(5):
        files.write_atomic(path, f"{i}".encode() * 10_000)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert path.read_bytes() == b"4" * 10_000


def test_failed_write_keeps_old_content_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    files.write_atomic(path, b"good")
    with pytest.raises(TypeError):
        files.write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_write_atomic_into_missing_directory_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        files.write_atomic(tmp_path / "missing" / "state.json", b"x")
    assert list(tmp_path.iterdir()) == []


@needs_root
def test_write_atomic_sets_the_owner(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "token"
    files.write_atomic(path, b"t", owner=(nobody.pw_uid, nobody.pw_gid))
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert mode_of(path) == 0o600


def test_ensure_dir_sets_the_mode(tmp_path: Path, permissive_umask) -> None:
    target = tmp_path / "a" / "b"
    files.ensure_dir(target, 0o700)
    assert mode_of(target) == 0o700
    target.chmod(0o755)
    files.ensure_dir(target, 0o711)
    assert mode_of(target) == 0o711


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o702])
def test_ensure_dir_refuses_a_directory_others_could_write(tmp_path: Path, mode: int) -> None:
    """Someone else may have planted a token or cookie secret in it: not silently adopted."""
    target = tmp_path / "state"
    target.mkdir()
    target.chmod(mode)
    with pytest.raises(PermissionError) as refused:
        files.ensure_dir(target, 0o700)
    assert f"{target} is writable by others (mode {mode:04o})" in refused.value.strerror
    assert f"chmod go-w {target}" in refused.value.strerror
    assert mode_of(target) == mode


def test_ensure_dir_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OSError, match="is not a plain directory"):
        files.ensure_dir(tmp_path / "link", 0o700)
    assert mode_of(real) == 0o755


@needs_root
@pytest.mark.parametrize("owner", [None, "root"], ids=["ours", "for-root"])
def test_ensure_dir_refuses_another_users_directory(tmp_path: Path, owner: str | None) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    target = tmp_path / "state"
    target.mkdir(mode=0o700)
    os.chown(target, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(PermissionError) as refused:
        files.ensure_dir(target, 0o700, owner=(0, 0) if owner else None)
    assert f"{target} belongs to nobody, not root" in refused.value.strerror
    assert target.stat().st_uid == nobody.pw_uid  # neither taken over nor changed


@needs_root
def test_ensure_dir_hands_a_directory_to_its_owner(tmp_path: Path) -> None:
    """JupyterLab's own dir: made (or found) as root's and given to the lab user, whose
    own mode changes are simply undone."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    target = tmp_path / "runtime"
    for _ in range(2):
        files.ensure_dir(target, 0o700, owner=(nobody.pw_uid, nobody.pw_gid))
        assert (target.stat().st_uid, mode_of(target)) == (nobody.pw_uid, 0o700)
        target.chmod(0o777)  # as the lab user could


# --- the state file ----------------------------------------------------------------------


def test_state_round_trip(tmp_path: Path) -> None:
    original = sample_state(
        supervisor_pid=1234,
        supervisor_started_at=1_700_000_000.25,
        lab_pid=1240,
        status=state.READY,
        started_at=1_700_000_001.0,
        ready_at=1_700_000_004.5,
        restarts=3,
        last_exit=state.LastExit(code=None, signal=9, at=1_700_000_000.0, reason="killed"),
        last_error="port 8888 in use",
    )
    assert state.State.from_dict(json.loads(original.to_json())) == original
    state.write_state(tmp_path, original)
    assert state.read_state(tmp_path) == original
    assert mode_of(tmp_path / state.STATE_FILE) == 0o600


def test_state_json_is_readable_json(tmp_path: Path) -> None:
    state.write_state(tmp_path, sample_state(restarts=2))
    data = json.loads((tmp_path / state.STATE_FILE).read_text())
    assert data["restarts"] == 2 and data["port"] == 8888
    assert data["last_exit"] is None


def test_state_ignores_unknown_fields() -> None:
    data = json.loads(sample_state().to_json())
    data["from_a_newer_version"] = {"x": 1}
    assert state.State.from_dict(data) == sample_state()


def test_evolve_makes_a_new_state() -> None:
    before = sample_state()
    after = before.evolve(status=state.STOPPED, restarts=1)
    assert (before.status, before.restarts) == (state.STARTING, 0)
    assert (after.status, after.restarts) == (state.STOPPED, 1)


def test_read_state_missing(tmp_path: Path) -> None:
    with pytest.raises(state.StateError) as info:
        state.read_state(tmp_path)
    assert "no state at" in str(info.value)
    assert str(tmp_path / state.STATE_FILE) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b'{"token": "abc", "url": ',
        b"",
        b"[1, 2, 3]",
        b"42",
        b'"text"',
        b"null",
        b"{}",
        b'{"token": "x"}',
        b'{"token": "x", "url": "u", "ip": "i", "port": 1, "base_url": "/", "user": "u",'
        b' "notebook_dir": "/", "config_path": null, "supervisor_pid": null,'
        b' "supervisor_started_at": null, "last_exit": "crashed"}',
        b"\xff\xfe\x00\x01 not text",
        b'{"token": "\xe9"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"token": ' + b"[" * 40 + b"]" * 40 + b"}",
        b'{"token": "' + b"x" * (2 << 20) + b'"}',
    ],
    ids=[
        "truncated",
        "empty",
        "list",
        "number",
        "string",
        "null",
        "no-fields",
        "few-fields",
        "bad-last-exit",
        "binary",
        "latin-1",
        "deep",
        "nested",
        "huge",
    ],
)
def test_read_state_damaged(tmp_path: Path, content: bytes) -> None:
    (tmp_path / state.STATE_FILE).write_bytes(content)
    with pytest.raises(state.StateError) as info:
        state.read_state(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / state.STATE_FILE) in message


@needs_root
def test_read_state_permission_denied(open_dir: Path) -> None:
    state.write_state(open_dir, sample_state())  # 0600, owned by root
    code = (
        "import sys; from pathlib import Path; from jlservice import state\n"
        "try: state.read_state(Path(sys.argv[1]))\n"
        "except state.StateError as e: print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(open_dir)],
        user="nobody",
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("permission denied reading"), out.stdout
    assert "run as root" in out.stdout


# --- tokens and secrets ------------------------------------------------------------------


def test_new_token_is_long_random_hex() -> None:
    tokens = {login.new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert len(token) >= 48
        int(token, 16)
        assert token == token.lower()


def test_load_or_create_token_reuses_the_previous_one(tmp_path: Path, permissive_umask) -> None:
    first = login.load_or_create_token(tmp_path)
    assert len(first) >= 48
    assert mode_of(tmp_path / login.TOKEN_FILE) == 0o600
    assert login.load_or_create_token(tmp_path) == first


def test_load_or_create_token_takes_over_the_token_of_an_older_state_file(tmp_path: Path) -> None:
    state.write_state(tmp_path, sample_state(token="a" * 64))
    login.write_cookie_secret(tmp_path, b"s" * 64)
    assert login.load_or_create_token(tmp_path) == "a" * 64
    assert (tmp_path / login.TOKEN_FILE).read_text() == "a" * 64


@pytest.mark.parametrize("content", [b"short", b"{not a token}" * 8, b"\xff\xfe" * 40])
def test_load_or_create_token_replaces_a_bad_token(tmp_path: Path, content: bytes) -> None:
    (tmp_path / login.TOKEN_FILE).write_bytes(content)
    token = login.load_or_create_token(tmp_path)
    assert len(token) >= 48 and token.encode() != content
    assert (tmp_path / login.TOKEN_FILE).read_text() == token


def test_secrets_are_kept_for_the_same_lab_user(tmp_path: Path) -> None:
    first, replaced = login.load_secrets(tmp_path, 1234, "alice")
    assert len(first.token) >= 48 and len(first.cookie_secret) >= 32
    assert replaced is None  # a first start replaces nobody's
    state.write_state(tmp_path, sample_state(token=first.token, lab_uid=1234))
    assert login.load_secrets(tmp_path, 1234, "alice") == (first, None)
    # A state written before the uid was recorded: the same user name keeps them too.
    state.write_state(tmp_path, sample_state(token=first.token))
    assert login.load_secrets(tmp_path, 1234, "alice") == (first, None)


@pytest.mark.parametrize(
    ("recorded", "uid", "name", "holder"),
    [
        (1234, 1235, "alice", "alice (uid 1234)"),  # same name, another account
        (1234, 1235, "bob", "alice (uid 1234)"),
        (None, 1235, "bob", "alice (uid not recorded)"),
        ("1235", 1235, "alice", "alice (uid not recorded)"),
        (True, 1, "alice", "alice (uid not recorded)"),  # a bool is no uid 1
    ],
)
def test_secrets_are_new_for_another_lab_user(
    tmp_path: Path, recorded: object, uid: int, name: str, holder: str
) -> None:
    """Whoever else was handed them (or a state that does not say) never uses them again."""
    first, _ = login.load_secrets(tmp_path, 1234, "alice")
    state.write_state(tmp_path, sample_state(token=first.token, lab_uid=recorded))
    second, replaced = login.load_secrets(tmp_path, uid, name)
    assert second.token != first.token and len(second.token) >= 48
    assert second.cookie_secret != first.cookie_secret
    assert (tmp_path / login.COOKIE_SECRET_FILE).read_bytes() == second.cookie_secret
    assert (tmp_path / login.TOKEN_FILE).read_text() == second.token
    assert replaced == holder


def test_secrets_replace_a_short_token(tmp_path: Path) -> None:
    state.write_state(tmp_path, sample_state(token="short", lab_uid=1234))
    token = login.load_secrets(tmp_path, 1234, "alice")[0].token
    assert token != "short" and len(token) >= 48


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe binary", b"[" * 100_000 + b"]" * 100_000],
    ids=["json", "binary", "deep"],
)
def test_secrets_survive_a_damaged_state(tmp_path: Path, content: bytes) -> None:
    (tmp_path / state.STATE_FILE).write_bytes(content)
    assert len(login.load_secrets(tmp_path, 1234, "alice")[0].token) >= 48


def test_cookie_secret_is_created_0600_and_reused(tmp_path: Path, permissive_umask) -> None:
    secret = login.load_or_create_cookie_secret(tmp_path)
    assert len(secret) >= 32
    assert mode_of(tmp_path / login.COOKIE_SECRET_FILE) == 0o600
    assert login.load_or_create_cookie_secret(tmp_path) == secret
    login.write_cookie_secret(tmp_path, b"x" * 64)
    assert login.load_or_create_cookie_secret(tmp_path) == b"x" * 64


def test_login_url() -> None:
    s = sample_state(url="http://127.0.0.1:9999/jupyter/")
    assert state.login_url(s) == f"http://127.0.0.1:9999/jupyter/lab?token={s.token}"


# --- is the supervisor alive? ------------------------------------------------------------


def test_process_start_time_matches_psutil() -> None:
    started = procfs.start_time(os.getpid())
    assert started is not None
    assert abs(started - psutil.Process().create_time()) < 0.05
    assert started <= time.time()


def test_process_start_time_of_a_missing_pid() -> None:
    assert procfs.start_time(2**22 + 12345) is None


def test_process_start_time_of_a_process_with_odd_name(tmp_path: Path) -> None:
    """comm may hold spaces and ')' : the parser must split on the last ')'."""
    program = tmp_path / "a) b (c"
    os.symlink(sys.executable, program)
    child = subprocess.Popen([str(program), "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).name() != "a) b (c" and time.monotonic() < deadline:
            time.sleep(0.01)
        started = procfs.start_time(child.pid)
        assert started is not None
        assert abs(started - psutil.Process(child.pid).create_time()) < 0.05
    finally:
        child.kill()
        child.wait()


def test_supervisor_alive_for_this_process() -> None:
    s = sample_state(
        supervisor_pid=os.getpid(), supervisor_started_at=procfs.start_time(os.getpid())
    )
    assert state.supervisor_alive(s)


def test_supervisor_alive_false_for_a_reused_pid() -> None:
    started = procfs.start_time(os.getpid())
    assert started is not None
    s = sample_state(supervisor_pid=os.getpid(), supervisor_started_at=started - 100)
    assert not state.supervisor_alive(s)


def test_a_wall_clock_step_does_not_make_the_supervisor_look_dead() -> None:
    """NTP steps the clock at boot, when jlservice has just started: its start time in
    wall-clock seconds moves with the step, its start in ticks since boot does not."""
    me = os.getpid()
    stepped = sample_state(
        supervisor_pid=me,
        supervisor_started_at=procfs.start_time(me) - 3600,
        supervisor_start_ticks=procfs.start_ticks(me),
    )
    assert state.supervisor_alive(stepped)
    reused = stepped._replace(supervisor_start_ticks=procfs.start_ticks(me) - 1)
    assert not state.supervisor_alive(reused)


def test_supervisor_alive_false_for_a_dead_pid() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = procfs.start_time(child.pid)
    child.wait()
    s = sample_state(supervisor_pid=child.pid, supervisor_started_at=started or time.time())
    assert not state.supervisor_alive(s)


@pytest.mark.parametrize(("pid", "started"), [(None, None), (None, 1.0), (1, None), (0, 1.0)])
def test_supervisor_alive_false_without_pid_or_start(pid, started) -> None:
    assert not state.supervisor_alive(
        sample_state(supervisor_pid=pid, supervisor_started_at=started)
    )


def test_read_published_takes_the_newer_of_state_dir_and_runtime_dir(tmp_path: Path) -> None:
    state_dir, runtime_dir = tmp_path / "state", tmp_path / "run"
    state_dir.mkdir()
    runtime_dir.mkdir()
    state.write_state(state_dir, sample_state(status="ready", sequence=1, updated_at=100.0))
    assert state.read_published(state_dir, runtime_dir).status == "ready"
    # The wall clock stepped back between the two: the sequence says which is newer.
    spare = sample_state(status="backoff", sequence=2, updated_at=50.0, state_error="cannot …")
    state.write_state(runtime_dir, spare)
    assert state.read_published(state_dir, runtime_dir).state_error == "cannot …"
    state.write_state(state_dir, sample_state(status="stopped", sequence=3, updated_at=10.0))
    assert state.read_published(state_dir, runtime_dir).status == "stopped"
    (state_dir / state.STATE_FILE).unlink()
    assert state.read_published(state_dir, runtime_dir).status == "backoff"


def test_read_published_prefers_the_running_supervisors_record(tmp_path: Path) -> None:
    """A spare left by a supervisor that is gone loses to the running one's state.json,
    however high its sequence or late its clock."""
    state_dir, runtime_dir = tmp_path / "state", tmp_path / "run"
    state_dir.mkdir()
    runtime_dir.mkdir()
    me = os.getpid()
    running = sample_state(
        status="ready",
        sequence=1,
        updated_at=1.0,
        supervisor_pid=me,
        supervisor_start_ticks=procfs.start_ticks(me),
    )
    state.write_state(state_dir, running)
    gone = sample_state(status="backoff", sequence=900, updated_at=9e9, supervisor_pid=2**22 + 1)
    state.write_state(runtime_dir, gone)
    assert state.read_published(state_dir, runtime_dir).status == "ready"


def test_secrets_that_cannot_be_saved_leave_no_old_token_behind(
    tmp_path: Path, monkeypatch
) -> None:
    old = login.load_or_create_token(tmp_path)
    login.load_or_create_cookie_secret(tmp_path)
    state.write_state(tmp_path, sample_state(token=old))  # what the supervisor published

    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(login, "write_cookie_secret", disk_full)
    with pytest.raises(OSError):
        login.save_secrets(tmp_path, "b" * 64, b"c" * 64)
    assert not (tmp_path / login.TOKEN_FILE).exists()
    assert not (tmp_path / login.COOKIE_SECRET_FILE).exists()
    assert login.load_or_create_token(tmp_path) not in (old, "b" * 64)  # a fresh one


def test_records_of_an_older_jlservice_without_sequence_go_by_the_wall_clock(tmp_path) -> None:
    state_dir, runtime_dir = tmp_path / "state", tmp_path / "run"
    state_dir.mkdir()
    runtime_dir.mkdir()
    state.write_state(state_dir, sample_state(status="ready", updated_at=100.0))
    state.write_state(runtime_dir, sample_state(status="backoff", updated_at=200.0))
    assert state.read_published(state_dir, runtime_dir).status == "backoff"
