"""One JupyterLab's life in the state machine: start, ready, exits, hangs, backoff, give-up."""

from __future__ import annotations

import asyncio
import signal

from jlservice import EX_CONFIG, errors
from jlservice.supervisor.children import ExitStatus
from jlservice.supervisor.events import (
    BackoffElapsed,
    CertificateCheckDue,
    LabReady,
    LabUnhealthy,
    StartTimedOut,
    StopRequested,
    WarmParentChanged,
)
from jlservice.supervisor.loop import Phase


async def test_start_then_ready_is_published_to_systemd_state_and_metrics(machine) -> None:
    m = machine()
    m.start()
    await m.settle()
    assert m.state.status == "starting" and m.state.lab_pid == m.lab.pid
    assert m.sent() == [f"STATUS=Starting JupyterLab on {m.launch.url} as {m.launch.account.name}"]
    assert m.reaping and m.follower.calls == [("follow", (m.config,))]
    assert m.warm.kept == []  # the warm parent's imports wait until JupyterLab is ready
    assert not m.view.up

    lab = await m.ready()
    assert m.supervisor.phase is Phase.READY
    assert m.state.status == "ready" and m.state.last_error is None
    assert m.sent("READY=1") == [
        f"READY=1\nSTATUS=JupyterLab ready on {m.launch.url} as {m.launch.account.name} "
        f"(pid {lab.pid})"
    ]
    assert m.warm.kept == [(m.launch.port, True)]
    assert m.view.up and m.view.endpoint.pid == lab.pid and m.view.ready_duration == 0.25


async def test_crash_after_ready_restarts_at_once_and_is_not_a_failed_start(machine) -> None:
    m = machine()
    m.start()
    first = await m.ready()
    first.exit()
    await m.settle()
    assert m.swept == [{4242}]  # leftovers ended, the warm parent spared
    assert m.state.last_exit.signal == signal.SIGKILL and m.state.last_exit.reason == "crash"
    assert await m.fire(BackoffElapsed) == 0.0
    assert m.lab is not first and m.state.status == "starting"
    assert m.state.restarts == 1 and m.view.restarts["crash"] == 1
    assert m.statuses() == ["starting", "ready", "stopping", "backoff", "starting"]


async def test_the_keeper_learns_how_long_a_cold_start_takes_never_a_warm_one(machine) -> None:
    """How long a start may wait for a warm parent still importing (issue 14, item 7)."""
    m = machine()
    m.start()
    first = await m.ready()
    assert m.warm.cold_starts == [0.25]
    m.starter.warm = True
    first.exit()
    await m.settle()
    await m.fire(BackoffElapsed)
    await m.ready()
    assert m.warm.cold_starts == [0.25]


async def test_a_command_during_a_start_hurries_the_keeper(machine) -> None:
    """A start waiting for a warm parent still importing must not keep a stop waiting."""
    m = machine()
    m.start()
    first = await m.ready()
    m.starter.slow = asyncio.get_running_loop().create_future()
    first.exit()
    await m.settle()
    await m.fire(BackoffElapsed)  # the start now waits
    await m.step(StopRequested("SIGTERM"))
    assert m.warm.hurried == 1
    m.starter.slow.set_result(None)
    await m.settle()
    assert await m.exit_code() == 0 and m.lab.stops == ["stop"]


async def test_exit_before_ready_backs_off_with_its_last_words_and_distrusts_a_fork(
    machine,
) -> None:
    m = machine(restart={"initial_delay": 0.5})
    m.starter.warm = True
    m.start()
    await m.settle()
    m.lab.exit(ExitStatus(m.lab.pid, 1, None))
    await m.settle()
    assert m.state.status == "backoff"
    problem = "JupyterLab exited with status 1 during start-up: last words"
    assert m.state.last_error == problem
    assert m.sent()[-1] == f"STATUS=Restarting JupyterLab in 0 s: {problem}"
    assert m.warm.distrusted == ["a JupyterLab it forked exited with status 1 starting"]
    await m.fire(BackoffElapsed)
    m.lab.exit(ExitStatus(m.lab.pid, 1, None))
    await m.settle()
    assert m.timers[-1][0] == 0.5  # the second failed start in a row waits


async def test_failed_starts_in_a_row_give_up_with_exit_1(machine) -> None:
    m = machine(restart={"max_failures": 3})
    m.start()
    await m.failed_starts(3)
    assert await m.exit_code() == 1
    assert m.state.status == "failed"
    assert m.state.last_error.startswith("gave up after 3 failed starts in a row: JupyterLab")
    assert m.sent()[-1].startswith("STATUS=Failed: gave up after 3 failed starts")


async def test_with_the_defaults_ten_crashes_of_a_ready_server_are_ten_restarts_at_once(
    machine,
) -> None:
    m = machine()
    m.start()
    for _ in range(10):
        lab = await m.ready()
        lab.exit()
        await m.settle()
        assert await m.fire(BackoffElapsed) == 0.0
    assert not m.task.done() and m.state.restarts == 10


async def test_with_the_defaults_a_command_that_never_starts_backs_off_to_max_delay_then_gives_up(
    machine,
) -> None:
    m = machine()
    m.start()
    delays = []
    while True:
        await m.settle()
        m.lab.exit(ExitStatus(m.lab.pid, 1, None))
        await m.settle()
        if m.task.done():
            break
        delays.append(await m.fire(BackoffElapsed))
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert await m.exit_code() == 1
    assert m.state.last_error.startswith("gave up after 10 failed starts in a row")


async def test_a_storm_of_crashes_of_ready_servers_backs_off_and_gives_up(machine) -> None:
    m = machine(restart={"max_crashes": 3, "max_failures": 4})
    m.start()
    delays = []
    while not m.task.done():
        lab = await m.ready()
        lab.exit()
        await m.settle()
        if not m.task.done():
            delays.append(await m.fire(BackoffElapsed))
    # Crashes 4, 5 and 6 come within a minute of the first three: a storm, failed starts.
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert await m.exit_code() == 1


async def test_port_in_use_retries_after_the_backoff(machine) -> None:
    m = machine()
    m.starter.refusals = [errors.CannotStartNow("port 9123 on 127.0.0.1 is in use")]
    m.start()
    await m.settle()
    assert m.labs == [] and m.state.status == "backoff"
    assert m.state.last_error == "port 9123 on 127.0.0.1 is in use"
    await m.fire(BackoffElapsed)
    await m.ready()
    assert m.state.status == "ready"


async def test_a_port_another_program_holds_is_waited_for_without_giving_up(machine) -> None:
    m = machine()
    held = "port 9123 on 127.0.0.1 is in use by pid 77 (python3); stop it or change [lab] port"
    m.starter.refusals = [errors.PortInUse(held)] * 30
    m.start()
    delays = []
    for _ in range(30):
        await m.settle()
        assert m.state.status == "backoff" and m.view.port_in_use
        delays.append(m.timers[-1][0])
        if len(delays) < 30:
            await m.fire(BackoffElapsed)
    assert delays[:8] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert max(delays) == 30.0 and not m.task.done()
    assert m.state.last_error == held
    assert m.sent()[-1] == f"STATUS=Waiting for JupyterLab's port, trying again in 30 s: {held}"
    # The first wait ends systemd's start job (up, waiting), so its start timeout never fires.
    assert m.sent("READY=1") == [
        f"READY=1\nSTATUS=Waiting for JupyterLab's port, trying again in 0.5 s: {held}"
    ]
    await m.fire(BackoffElapsed)
    await m.ready()  # freed: the next start serves
    assert not m.view.port_in_use and m.supervisor.waiting.waits == 0


async def test_a_configuration_the_launch_refuses_halts_with_78(machine) -> None:
    m = machine()
    m.starter.refusals = [errors.LaunchError("user x may not execute /venv/bin/jupyter-lab")]
    m.start()
    assert await m.exit_code() == EX_CONFIG
    assert m.state.status == "failed"
    assert m.sent()[-1] == "STATUS=Failed: user x may not execute /venv/bin/jupyter-lab"


async def test_start_timeout_stops_it_and_counts_a_failure(machine) -> None:
    m = machine(restart={"start_timeout": 7})
    m.start()
    await m.settle()
    lab = m.lab
    await m.step(StartTimedOut(lab.pid))
    assert lab.stops == ["start_timeout"]
    assert m.state.status == "backoff"
    assert m.state.last_error == "JupyterLab did not answer within 7 s"
    assert m.view.restarts["unhealthy"] == 1


async def test_a_hang_is_replaced_and_the_watchdog_is_fed_meanwhile(machine) -> None:
    m = machine()
    m.start()
    lab = await m.ready()
    await m.step(LabUnhealthy(lab.pid, "timed out"))
    assert lab.stops == ["unhealthy"]
    assert "WATCHDOG=1" in m.notifier.sent  # jlservice acts: systemd need not
    assert m.state.last_error == "JupyterLab stopped answering: timed out"
    await m.fire(BackoffElapsed)
    assert m.lab is not lab


async def test_events_about_another_jupyterlab_or_a_stale_timer_change_nothing(machine) -> None:
    m = machine()
    m.start()
    await m.settle()
    await m.step(LabReady(m.lab.pid + 99))
    await m.step(LabUnhealthy(m.lab.pid, "not ready yet, so not a hang"))
    await m.step(BackoffElapsed(attempt=0))
    assert m.supervisor.phase is Phase.STARTING and m.lab.stops == [] and len(m.labs) == 1


async def test_warm_parent_changes_reach_state_and_metrics(machine) -> None:
    from jlservice.state import WarmParent

    m = machine()
    m.start()
    await m.ready()
    m.warm.parent = WarmParent(777, True)
    await m.step(WarmParentChanged())
    assert m.state.warm_parent == WarmParent(777, True) and m.view.warm_parent.pid == 777


async def test_the_certificate_is_looked_at_again_every_day(machine) -> None:
    m = machine()
    m.start()
    await m.settle()
    assert [d for d, e in m.timers if isinstance(e, CertificateCheckDue)] == [86400.0]
    await m.fire(CertificateCheckDue)
    assert [d for d, e in m.timers if isinstance(e, CertificateCheckDue)] == [86400.0] * 2
    assert m.view.tls_cert_expiry is None  # no [tls]


async def test_a_jupyterlab_sigkill_cannot_end_is_left_behind_and_the_next_one_starts(
    machine,
) -> None:
    m = machine()
    m.start()
    frozen = await m.ready()
    frozen.unkillable = True
    m.stuck.add(frozen.pid)
    await m.step(LabUnhealthy(frozen.pid, "timed out"))
    assert frozen.stops == ["unhealthy"]
    assert m.state.stuck_pids == (frozen.pid,) and m.view.stuck_processes == 1
    await m.fire(BackoffElapsed)
    assert m.lab is not frozen and m.state.status == "starting"
    frozen.exit()  # thawed at last: its exit is no longer the current JupyterLab's
    await m.settle()
    assert m.state.status == "starting" and m.supervisor.lab is m.lab


async def test_ready_is_published_with_what_the_warm_keeper_just_did(machine) -> None:
    """At ready the warm keeper asks the warm parent to check itself: whoever reads "ready" must
    see that it cannot serve yet (or a crash then would be taken for a warm one)."""
    from jlservice.state import WarmParent

    m = machine()
    m.warm.parent = WarmParent(4242, True)
    m.start()
    await m.settle()
    m.warm.keep = lambda launch, enabled: setattr(m.warm, "parent", WarmParent(4242, False))
    await m.ready()
    ready = next(r for r in m.records.written if r.status == "ready")
    assert ready.warm_parent == WarmParent(4242, False)
