"""A state.json that cannot be written (full or read-only disk, deleted directory) stops
nothing: JupyterLab keeps being supervised, the fault is said, and the file is written
again once it can be."""

from __future__ import annotations

import errno

from jlservice.supervisor.events import BackoffElapsed


async def test_a_full_state_disk_does_not_stop_restarts_and_heals_by_itself(machine) -> None:
    m = machine()
    m.start()
    lab = await m.ready()
    written = len(m.records.written)
    m.records.failing = OSError(errno.ENOSPC, "No space left on device")
    lab.exit()  # a crash while the disk is full
    await m.settle()
    await m.fire(BackoffElapsed)
    await m.ready()
    assert m.supervisor.phase.value == "ready" and len(m.records.written) == written
    spare = m.records.spares[-1]
    assert spare.status == "ready" and spare.lab_pid == m.lab.pid
    assert spare.state_error == (
        "cannot write /var/lib/jlservice/state.json: No space left on device; free space "
        "there or make it writable: JupyterLab keeps running, and jlservice writes it as "
        "soon as it can"
    )
    assert m.view.state_write_failing
    assert [d for d, _ in m.callbacks] == [5.0]  # one retry pending, however many saves

    m.records.failing = None  # space freed
    m.callbacks.pop()[1]()
    assert m.state.status == "ready" and m.state.lab_pid == m.lab.pid
    assert m.state.state_error is None and not m.view.state_write_failing
    assert m.records.spares[-1] is None  # the spare copy is removed


async def test_the_retry_rearms_while_the_fault_lasts(machine) -> None:
    m = machine()
    m.start()
    await m.ready()
    m.records.failing = OSError(errno.EROFS, "Read-only file system")
    m.supervisor.publish.trouble("something")
    _, retry = m.callbacks.pop()
    retry()  # still read-only
    assert [d for d, _ in m.callbacks] == [5.0]
    assert "Read-only file system" in m.records.spares[-1].state_error


def test_a_deleted_state_dir_is_made_again_with_the_secrets_in_use(tmp_path) -> None:
    import shutil

    from jlservice import login, state
    from jlservice.supervisor.publish import StateFile

    sink = StateFile(tmp_path / "state", tmp_path / "run")
    secrets = login.Secrets("a" * 64, b"c" * 64)
    record = state.State("a" * 64, "http://x/", "127.0.0.1", 1, "/", "u", "/n", None, 1, 1.0)
    sink.write(record, secrets)
    shutil.rmtree(tmp_path / "state")
    sink.write(record.evolve(status="ready"), secrets)
    assert state.read_state(tmp_path / "state").status == "ready"
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert login.load_or_create_token(tmp_path / "state") == secrets.token
    assert login.load_or_create_cookie_secret(tmp_path / "state") == secrets.cookie_secret
