"""Reloads in the state machine: RELOADING=1 … READY=1 around each, whatever the result."""

from __future__ import annotations

from helpers.launch import make_config

from jlservice import errors
from jlservice.start import launcher
from jlservice.supervisor import reload
from jlservice.supervisor.events import BackoffElapsed, PendingReloadDue, ReloadRequested
from jlservice.supervisor.loop import Phase


def restart_plan(m, **lab) -> reload.Plan:
    """What a reload finds when the file now asks for a different JupyterLab (the rest of
    the configuration as it was)."""
    sections = {"reload": {"when": m.config.reload.when, "max_wait": m.config.reload.max_wait}}
    new = make_config(m.tmp_path, sections, **lab)
    return reload.Plan(reload.APPLIED, new, launcher.build(new, environ={"PATH": "/usr/bin"}))


async def test_unchanged_reload_keeps_jupyterlab_and_answers_systemd_at_once(machine) -> None:
    m = machine(log={"level": "debug"})
    m.start()
    lab = await m.ready()
    m.plans.append(reload.Plan(reload.UNCHANGED, m.config, m.launch))
    await m.step(ReloadRequested("SIGHUP"))
    assert m.sent()[-2:] == ["RELOADING=1", m.sent("READY=1")[-1]]
    assert m.sent()[-1].startswith("READY=1\nSTATUS=JupyterLab ready on")
    assert m.state.last_reload.result == "unchanged" and m.view.reloads["unchanged"] == 1
    assert lab.stops == [] and ("apply", (m.config.metrics,)) in m.exporter.calls
    assert ("accept", (m.config.digest,)) in m.follower.calls


async def test_rejected_reload_keeps_everything_and_says_why(machine) -> None:
    m = machine()
    m.start()
    lab = await m.ready()
    m.plans.append(reload.Plan(reload.REJECTED, error="jlservice.toml: [lab] port: 70000 …"))
    await m.step(ReloadRequested("file"))
    assert lab.stops == [] and m.state.config_error == "jlservice.toml: [lab] port: 70000 …"
    assert m.sent()[-2] == "RELOADING=1"
    assert m.sent()[-1].endswith(
        "; configuration rejected, still using the previous one: "
        "jlservice.toml: [lab] port: 70000 …"
    )
    assert m.view.config_error and m.view.reloads["rejected"] == 1
    m.plans.append(reload.Plan(reload.UNCHANGED, m.config, m.launch))
    await m.step(ReloadRequested("file"))
    assert m.state.config_error is None and not m.view.config_error


async def test_reload_that_changes_the_launch_restarts_and_is_ready_when_the_new_one_is(
    machine,
) -> None:
    m = machine()
    m.start()
    old = await m.ready()
    plan = restart_plan(m, port=9124)
    m.plans.append(plan)
    await m.step(ReloadRequested("SIGHUP"))
    assert old.stops == ["reload"]
    assert m.lab is not old and m.starter.starts[-1][0].port == 9124
    assert m.sent()[-1] == f"STATUS=Starting JupyterLab on {plan.launch.url} as root"
    assert m.sent("READY=1")[-1].startswith("READY=1\nSTATUS=JupyterLab ready on http://")
    before = len(m.sent("READY=1"))
    await m.ready()
    assert len(m.sent("READY=1")) == before + 1  # owed since RELOADING=1
    assert m.state.port == 9124 and m.state.last_reload.result == "applied"
    assert m.state.restarts == 1 and m.view.restarts["reload"] == 1
    assert m.supervisor.failures == 0


async def test_a_failed_start_after_a_reload_still_ends_the_reload(machine) -> None:
    m = machine()
    m.start()
    await m.ready()
    m.plans.append(restart_plan(m, port=9124))
    m.starter.refusals = [errors.CannotStartNow("port 9124 on 127.0.0.1 is in use")]
    await m.step(ReloadRequested("SIGHUP"))
    assert m.sent("READY=1")[-1] == (
        "READY=1\nSTATUS=Reloaded, but JupyterLab failed to start: port 9124 on 127.0.0.1 is in use"
    )
    assert m.state.status == "backoff"


async def test_idle_reload_waits_for_the_kernels_then_restarts(machine) -> None:
    m = machine(reload={"when": "idle", "max_wait": 600})
    m.start()
    old = await m.ready()
    plan = restart_plan(m, port=9124)
    m.plans.append(plan)
    await m.step(ReloadRequested("file"))
    assert old.stops == [] and m.state.last_reload.result == "pending"
    assert m.state.reload_pending == "waiting for 1 busy kernel(s) to finish"
    assert m.sent()[-1].startswith("READY=1\nSTATUS=JupyterLab ready on")
    assert m.sent()[-1].endswith("; reload pending: waiting for busy kernels to finish")
    m.idle.set()
    await m.settle()
    assert old.stops == ["reload"] and m.starter.starts[-1][0].port == 9124
    assert m.state.reload_pending is None and m.state.last_reload.result == "applied"


async def test_a_restart_on_its_own_applies_the_pending_reload(machine) -> None:
    m = machine(reload={"when": "idle"})
    m.start()
    old = await m.ready()
    m.plans.append(restart_plan(m, port=9124))
    await m.step(ReloadRequested("file"))
    old.exit()  # a crash before the kernels went idle
    await m.settle()
    await m.fire(BackoffElapsed)
    assert m.starter.starts[-1][0].port == 9124 and m.reloads.pending is None
    due = PendingReloadDue(generation=1)
    await m.step(due)  # the wait's late answer changes nothing
    assert len(m.starter.starts) == 2


async def test_reload_during_backoff_starts_the_new_configuration_now(machine) -> None:
    m = machine(restart={"initial_delay": 30, "max_delay": 60})
    m.start()
    await m.failed_starts(3)
    assert m.supervisor.phase is Phase.BACKOFF and m.timers[-1][0] == 60
    m.plans.append(restart_plan(m, port=9124))
    await m.step(ReloadRequested("SIGHUP"))
    assert m.supervisor.phase is Phase.STARTING and m.starter.starts[-1][0].port == 9124
    assert m.supervisor.failures == 0
    await m.step(BackoffElapsed(m.supervisor.attempt - 1))  # the old timer: nothing
    assert len(m.starter.starts) == 4


async def test_reload_applies_what_jupyterlab_never_sees_at_once(machine) -> None:
    m = machine()
    m.start()
    await m.ready()
    new = make_config(m.tmp_path, {"restart": {"warm": False}, "metrics": {"enabled": False}})
    m.plans.append(reload.Plan(reload.UNCHANGED, new, m.launch))
    await m.step(ReloadRequested("SIGHUP"))
    assert m.warm.kept[-1] == (m.launch.port, False)  # warm restarts off
    assert m.follower.calls[-2:] == [("accept", (new.digest,)), ("follow", (new,))]
    assert m.exporter.calls[-1] == ("apply", (new.metrics,)) and m.supervisor.config is new


async def test_a_second_pending_reload_keeps_the_first_deadline_and_the_first_wait_is_stale(
    machine,
) -> None:
    m = machine(reload={"when": "idle", "max_wait": 600})
    m.start()
    old = await m.ready()
    m.plans.append(restart_plan(m, port=9124))
    await m.step(ReloadRequested("file"))
    first = m.reloads.pending
    m.plans.append(restart_plan(m, port=9125))
    await m.step(ReloadRequested("SIGHUP"))
    assert m.reloads.pending.generation == 2 and m.reloads.pending.deadline == first.deadline
    assert first.task.cancelled()
    await m.step(PendingReloadDue(generation=1))  # the first wait's answer: stale
    assert old.stops == [] and m.state.reload_pending is not None
    await m.step(PendingReloadDue(generation=2))
    assert old.stops == ["reload"] and m.starter.starts[-1][0].port == 9125


async def test_the_idle_wait_asks_who_holds_the_running_port_and_knows_a_dead_lab(
    machine,
) -> None:
    m = machine(reload={"when": "idle"})
    m.start()
    old = await m.ready()
    m.plans.append(restart_plan(m, port=9124))
    await m.step(ReloadRequested("file"))
    where = f"127.0.0.1:{m.launch.port}"  # the running JupyterLab's, not the new 9124
    assert m.stranger() == f"nothing listens on {where}"  # the fake listens nowhere
    old.exit()
    await m.settle()
    assert m.stranger() == "JupyterLab is not running"
