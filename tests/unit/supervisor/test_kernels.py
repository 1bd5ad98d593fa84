"""Kernels across JupyterLab's restarts in the state machine, with the real kernel keeper:
kept at a crash or a reload, handed over, adopted, ended after the grace, at a stop, at a
user change and with survive_restarts = false."""

from __future__ import annotations

import dataclasses
import json

from helpers.launch import make_config

from jlservice.kernels import handover as handover_module
from jlservice.kernels.handover import Kernel
from jlservice.metrics.sampler import Snapshot
from jlservice.start import launcher
from jlservice.supervisor import reload
from jlservice.supervisor.events import (
    BackoffElapsed,
    KernelGraceElapsed,
    NotebooksSampled,
    OomKilled,
    ReloadRequested,
    StopRequested,
)

A = Kernel("0a8f7e3c-1111-4222-8333-444455556666", 5001, 100.0)
B = Kernel("0b8f7e3c-1111-4222-8333-444455556666", 5002, 101.0)


def handover(m) -> dict:
    return json.loads(m.launch.handover_file.read_text())


async def crash_with(m, *kernels: Kernel):
    """The running JupyterLab dies, leaving `kernels`; the next one starts."""
    m.surviving = list(kernels)
    m.lab.exit()
    await m.settle()
    await m.fire(BackoffElapsed)


async def test_a_crash_keeps_the_kernels_hands_them_over_and_the_next_lab_adopts_them(
    machine,
) -> None:
    m = machine()
    m.start()
    await m.ready()
    assert handover(m)["keep"] is False and handover(m)["kernels"] == []
    await crash_with(m, A, B)
    assert m.swept[-1] >= {A.pid, B.pid, 4242}  # spared by the sweep, with the warm parent
    assert handover(m)["kernels"] == [{"id": A.id, "pid": A.pid}, {"id": B.id, "pid": B.pid}]
    assert m.state.kernels == (2, 0, 2)
    m.listed = {A.id: "a.ipynb", B.id: ""}
    await m.ready()
    await m.settle()
    assert m.state.kernels == (2, 2, 0) and m.view.kernels_adopted == 2
    # The grace passes: nothing is lost, nothing swept.
    swept = len(m.swept)
    m.now += 30
    await m.fire(KernelGraceElapsed)
    assert len(m.swept) == swept and not m.ended and sum(m.view.kernels_lost.values()) == 0


async def test_a_kernel_not_adopted_within_the_grace_is_swept_and_counted_lost(machine) -> None:
    m = machine()
    m.start()
    await m.ready()
    await crash_with(m, A, B)
    grace = next(d for d, e in m.timers if isinstance(e, KernelGraceElapsed))
    assert grace == 30.0  # the default
    m.listed = {A.id: "a.ipynb"}  # B's adoption failed
    await m.ready()
    await m.settle()
    swept = len(m.swept)
    m.now += grace
    await m.fire(KernelGraceElapsed)
    # B alone is ended: no sweep of everything (the running JupyterLab's orphans live on).
    assert m.ended == [{B.pid}] and len(m.swept) == swept
    assert m.view.kernels_lost["not_adopted"] == 1 and m.state.kernels == (2, 1, 0)


async def test_the_grace_runs_from_the_first_exit_across_failed_starts(machine) -> None:
    m = machine()
    m.start()
    await m.ready()
    await crash_with(m, A)
    m.now += 20
    await crash_with(m, A)  # the next JupyterLab dies in its start-up, A still waiting
    delay, _ = [t for t in m.timers if isinstance(t[1], KernelGraceElapsed)][-1]
    assert delay == 10.0


async def test_a_second_crash_keeps_the_adopted_kernels_again(machine) -> None:
    m = machine()
    m.start()
    await m.ready()
    await crash_with(m, A)
    m.listed = {A.id: ""}
    await m.ready()
    await m.settle()
    await crash_with(m, A)
    assert A.pid in m.swept[-1] and handover(m)["kernels"] == [{"id": A.id, "pid": A.pid}]
    await m.ready()
    await m.settle()
    assert m.view.kernels_adopted == 2 and m.state.kernels == (1, 1, 0)


def told(monkeypatch) -> list[bool]:
    """What each write of the handover said: keep the kernels at exit, or not."""
    said: list[bool] = []
    write = handover_module.write

    def spy(launch, keep, kernels=()):
        said.append(keep)
        write(launch, keep, kernels)

    monkeypatch.setattr(handover_module, "write", spy)
    return said


async def test_a_reload_keeps_the_kernels_and_the_old_lab_is_told_to_leave_them(
    machine, monkeypatch
) -> None:
    m = machine()
    m.start()
    lab = await m.ready()
    said = told(monkeypatch)
    new = make_config(m.tmp_path, port=9124)
    m.plans.append(reload.Plan(reload.APPLIED, new, launcher.build(new, environ={"PATH": "/b"})))
    m.surviving = [A]
    await m.step(ReloadRequested("SIGHUP"))
    assert lab.stops == ["reload"] and A.pid in m.swept[-1]
    assert said == [True, False]  # keep, just before the stop; then the next start's
    assert handover(m)["kernels"][0]["id"] == A.id


async def test_a_crash_of_jlservice_is_never_told_to_keep(machine, monkeypatch) -> None:
    """Only a stop jlservice makes says keep: a JupyterLab whose jlservice died (SIGTERM
    from the parent-death signal) reads keep = false and shuts its kernels down."""
    m = machine()
    said = told(monkeypatch)
    m.start()
    await m.ready()
    await crash_with(m, A)
    await m.ready()
    assert said and not any(said)


async def test_a_stop_ends_the_kernels_the_running_lab_and_the_waiting_ones(machine) -> None:
    m = machine()
    m.start()
    await m.ready()
    await crash_with(m, A)
    m.listed = {}
    await m.ready()
    await m.settle()
    m.surviving = [A]
    await m.step(StopRequested("SIGTERM"))
    assert handover(m)["keep"] is False  # the running JupyterLab shuts its kernels down
    assert A.pid not in m.swept[-1]
    assert m.view.kernels_lost["stop"] == 1
    assert await m.exit_code() == 0


async def test_a_user_change_ends_the_kernels(machine) -> None:
    m = machine()
    m.start()
    lab = await m.ready()
    account = dataclasses.replace(m.launch.account, uid=m.launch.account.uid + 1, name="other")
    other = dataclasses.replace(m.launch, account=account)
    m.plans.append(reload.Plan(reload.APPLIED, m.config, other))
    m.surviving = [A]
    await m.step(ReloadRequested("SIGHUP"))
    assert lab.stops == ["reload"]
    assert A.pid not in m.swept[-1] and m.view.kernels_lost["user_changed"] == 1
    assert handover(m)["kernels"] == []


async def test_a_user_change_while_no_jupyterlab_runs_ends_the_kernels(machine) -> None:
    """A reload during the backoff: the kernels kept for the old user must not be handed to
    the new user's JupyterLab."""
    m = machine(restart={"initial_delay": 5})
    m.start()
    await m.ready()
    await crash_with(m, A)
    m.lab.exit()  # the next start fails: a backoff
    await m.settle()
    account = dataclasses.replace(m.launch.account, uid=m.launch.account.uid + 1, name="other")
    other = dataclasses.replace(m.launch, account=account)
    m.plans.append(reload.Plan(reload.APPLIED, m.config, other))
    await m.step(ReloadRequested("SIGHUP"))  # starts the new user's JupyterLab at once
    assert m.starter.starts[-1][0].account.uid == account.uid
    assert A.pid not in m.swept[-1] and m.view.kernels_lost["user_changed"] == 1
    assert handover(m)["kernels"] == []


async def test_survive_restarts_false_is_todays_behaviour(machine) -> None:
    m = machine(kernels={"survive_restarts": False})
    m.start()
    await m.ready()
    assert not m.launch.keep_kernels and not m.launch.handover_file.exists()
    assert not any("kernel_manager_class" in a for a in m.launch.argv)
    await crash_with(m, A)
    assert A.pid not in m.swept[-1] and m.state.kernels == (0, 0, 0)


async def test_giving_up_ends_the_kernels_kept_for_a_start_that_never_came(machine) -> None:
    """The lab user can make every start fail (chmod 000 on its notebook dir): jlservice
    then exits, and what it kept must not run on without it."""
    m = machine(restart={"max_failures": 3})
    m.start()
    await m.ready()
    m.surviving = [A]
    m.lab.exit()
    await m.settle()
    await m.fire(BackoffElapsed)
    await m.failed_starts(2)  # A still runs: kept at each exit, for the next start
    assert A.pid in m.swept[-2]
    assert await m.exit_code() == 1
    assert A.pid not in m.swept[-1]  # the last sweep, at the exit, spared it no more
    assert m.kernels.lost["stop"] == 1


def _kill(kernel_id: str) -> OomKilled:
    return OomKilled(None, "", kernel_id, f"{kernel_id[:2]}.ipynb", 1, None, None, "")


async def test_oom_kills_of_kernels_jupyterlab_no_longer_has_are_forgotten(machine) -> None:
    """view.oom_kills (a series each) holds the kernels JupyterLab lists, and a kernel killed
    since the round began, which may be too new for it; nothing while JupyterLab does not
    answer."""
    m = machine()
    m.start()
    await m.ready()
    m.post(_kill(A.id))
    m.post(_kill(B.id))
    await m.step(NotebooksSampled(Snapshot(kernel_states={"idle": 1}, kernels=frozenset({A.id}))))
    assert set(m.view.oom_kills) == {A.id, B.id}  # B: killed since the round began
    await m.step(NotebooksSampled(Snapshot(kernel_states=None)))  # JupyterLab did not answer
    assert set(m.view.oom_kills) == {A.id, B.id}
    await m.step(NotebooksSampled(Snapshot(kernel_states={"idle": 1}, kernels=frozenset({A.id}))))
    assert m.view.oom_kills == {A.id: ("0a.ipynb", 1)}
