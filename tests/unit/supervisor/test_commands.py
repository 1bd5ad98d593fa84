"""Commands in every phase: stop, rotate, and signals (also those of the import window)."""

from __future__ import annotations

import os
import signal

import pytest

from jlservice.supervisor import reload
from jlservice.supervisor.children import ExitStatus
from jlservice.supervisor.events import (
    BackoffElapsed,
    LabUnhealthy,
    ReloadRequested,
    RotateRequested,
    StopRequested,
)
from jlservice.supervisor.loop import Phase


async def into(m, phase: Phase):
    """Bring the machine into `phase` with a JupyterLab that does not exit by itself."""
    m.start()
    await m.settle()
    if phase is Phase.STARTING:
        return
    await m.ready()
    if phase is Phase.READY:
        return
    if phase is Phase.RESTARTING:
        m.lab.obeys_stop = False  # stopped, not gone yet
        await m.step(LabUnhealthy(m.lab.pid, "timed out"))
        return
    await m.failed_starts(2)  # a second failure in a row: a real wait


@pytest.mark.parametrize("phase", [Phase.STARTING, Phase.READY, Phase.RESTARTING, Phase.BACKOFF])
async def test_stop_in_every_phase_ends_everything_and_exits_0(machine, phase) -> None:
    m = machine()
    await into(m, phase)
    assert m.supervisor.phase is phase
    lab = m.lab if m.supervisor.lab is not None else None
    m.post(StopRequested("SIGTERM"))
    await m.settle()
    if lab is not None and not lab.obeys_stop:  # it was already being stopped: it ends now
        lab.exit(ExitStatus(lab.pid, 0, None))
    assert await m.exit_code() == 0
    assert m.state.status == "stopped" and m.state.lab_pid is None
    assert "STOPPING=1\nSTATUS=Stopping JupyterLab" in m.notifier.sent
    assert m.warm.closed and m.swept  # leftovers ended in every case
    if lab is not None:
        assert "stop" in lab.stops or lab.stops == ["unhealthy"]


async def test_commands_while_stopping_are_ignored(machine) -> None:
    m = machine()
    await into(m, Phase.READY)
    m.lab.obeys_stop = False
    m.post(StopRequested("SIGTERM"))
    await m.settle()
    for event in (RotateRequested(), ReloadRequested("SIGHUP"), StopRequested("SIGINT")):
        await m.step(event)
    assert m.state.token == "t" * 64 and m.plans == [] and not m.task.done()
    m.lab.exit(ExitStatus(m.lab.pid, 0, None))
    assert await m.exit_code() == 0


async def test_rotate_restarts_with_new_secrets_and_is_not_a_failure(machine) -> None:
    m = machine()
    await into(m, Phase.READY)
    old = m.lab
    await m.step(RotateRequested())
    token = m.state.token
    assert token != "t" * 64 and len(token) == 64
    assert old.stops == ["rotate"] and m.lab is not old
    assert m.starter.starts[-1][1].token == token
    assert m.state.restarts == 1 and m.view.restarts["rotate"] == 1 and m.supervisor.failures == 0
    assert (m.tmp_path / "state" / "cookie_secret").read_bytes() == m.starter.starts[-1][1][1]


async def test_rotate_in_backoff_takes_effect_at_the_next_start(machine) -> None:
    m = machine()
    await into(m, Phase.BACKOFF)
    await m.step(RotateRequested())
    assert m.supervisor.phase is Phase.BACKOFF
    await m.fire(BackoffElapsed)
    assert m.starter.starts[-1][1].token == m.state.token != "t" * 64


@pytest.mark.parametrize(
    ("signum", "then"),
    [(signal.SIGHUP, "reload"), (signal.SIGUSR1, "rotate"), (signal.SIGTERM, "stop")],
)
async def test_signals_of_the_import_window_are_acted_on_once_the_loop_runs(
    machine, signum, then
) -> None:
    m = machine()
    m.plans.append(reload.Plan(reload.UNCHANGED, m.config, m.launch))
    m.start(early_signals=[signum])
    await m.settle()
    if then == "reload":
        assert m.plans == [] and m.state.last_reload.source == "SIGHUP"
    elif then == "rotate":
        assert m.state.token != "t" * 64 and m.labs[0].stops == ["rotate"]
    else:
        assert await m.exit_code() == 0


async def test_real_signals_are_commands(machine) -> None:
    m = machine()
    await into(m, Phase.READY)
    m.plans.append(reload.Plan(reload.UNCHANGED, m.config, m.launch))
    os.kill(os.getpid(), signal.SIGHUP)
    await m.settle()
    assert m.state.last_reload.source == "SIGHUP"
    os.kill(os.getpid(), signal.SIGTERM)
    await m.settle()
    assert await m.exit_code() == 0
