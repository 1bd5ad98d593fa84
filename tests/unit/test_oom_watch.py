"""The kernel log's OOM messages → which notebook, what it had, its limit (kernels.oom)."""

from __future__ import annotations

import asyncio
import os

import pytest

from jlservice.kernels.cgroups import Cgroup
from jlservice.kernels.oom import OomWatch
from jlservice.labapi import Endpoint
from jlservice.metrics.sampler import Snapshot
from jlservice.metrics.usage import Usage

K = "3f1c2a9e-6b1d-4c57-9d0e-8a1b2c3d4e5f"
NOTEBOOK = 'a dir/it\'s "ü".ipynb'


def _oom(pid: int, memcg: str = "/svc", task: str = "python3") -> list[str]:
    """What Linux 6.x logs for one kill in a memory cgroup."""
    return [
        f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
        f"oom_memcg={memcg},task_memcg={memcg},task={task},pid={pid},uid=1000",
        f"Memory cgroup out of memory: Killed process {pid} ({task}) total-vm:323768kB, "
        "anon-rss:102016kB, file-rss:6508kB, shmem-rss:4kB, UID:1000 pgtables:272kB "
        "oom_score_adj:500",
    ]


KERNELS = "/system.slice/jlservice.service/kernels"


def _watch(snapshot: Snapshot, endpoint: Endpoint | None = None) -> tuple[OomWatch, list]:
    posted: list = []
    watch = OomWatch(
        posted.append,
        lambda: snapshot,
        lambda: endpoint,
        {"/svc": 1 << 30}.get,
        kernels_cgroup=KERNELS,
    )
    return watch, posted


def _usage(pid: int, cgroup: Cgroup | None = None) -> Usage:
    return Usage(K, NOTEBOOK, pid, "busy", None, 1, 3.0, 1.0, 5 << 30, 4, 0, cgroup)


def test_a_kill_in_a_kernels_tree_names_its_notebook_memory_and_limit() -> None:
    snap = Snapshot(notebooks=(_usage(100),), owners={100: K, 4242: K})
    watch, posted = _watch(snap)
    for line in _oom(4242):
        watch.line(line)
    (kill,) = posted
    assert (kill.kernel_id, kill.notebook, kill.pid, kill.process) == (K, NOTEBOOK, 4242, "python3")
    assert kill.memory_bytes == (102016 + 6508 + 4) * 1024
    assert kill.limit_bytes == 1 << 30 and kill.notebook_memory_bytes == 5 << 30
    assert not kill.own_limit  # the service's: shared with the other notebooks


def test_the_kernels_own_cgroup_names_it_and_its_limit() -> None:
    snap = Snapshot(notebooks=(_usage(100, Cgroup(2 << 30, 2 << 30)),), owners={100: K})
    watch, posted = _watch(snap)
    for line in _oom(999_999_999, memcg=f"{KERNELS}/kernel-{K}"):
        watch.line(line)
    (kill,) = posted
    assert kill.kernel_id == K and kill.limit_bytes == 2 << 30 and kill.own_limit


def test_a_kernel_with_a_limit_of_its_own_killed_by_another_says_the_limit_hit() -> None:
    """Its own cgroup has 2 GiB, the service's (/svc) ran out at 1 GiB, or the machine did:
    the notice says the limit that was hit, never the kernel's own ("raise memory_max")."""
    snap = Snapshot(notebooks=(_usage(100, Cgroup(2 << 30, 2 << 30)),), owners={100: K})
    watch, posted = _watch(snap)
    for line in _oom(100):
        watch.line(line)
    machine = [_oom(100)[0].replace("CONSTRAINT_MEMCG", "CONSTRAINT_NONE"), _oom(100)[1]]
    for line in machine:
        watch.line(line)
    assert [(k.limit_bytes, k.own_limit) for k in posted] == [(1 << 30, False), (None, False)]


def test_the_machine_running_out_is_not_the_kernels_own_limit_though_its_cgroup_counts_it():
    snap = Snapshot(notebooks=(_usage(100, Cgroup(2 << 30, 2 << 30)),), owners={100: K})
    watch, posted = _watch(snap)
    own = f"{KERNELS}/kernel-{K}"
    summary, killed = _oom(999_999_999, memcg=own)
    watch.line(
        summary.replace("CONSTRAINT_MEMCG", "CONSTRAINT_NONE").replace(f"oom_memcg={own},", "")
    )
    watch.line(killed)
    assert [(k.limit_bytes, k.own_limit) for k in posted] == [(None, False)]


def test_a_kill_only_the_kernels_cgroup_counts_says_its_limit_but_not_that_it_was_hit() -> None:
    """The shipped unit hides the kernel log: the service's MemoryMax may have run out as
    well as the kernel's own limit, so the advice is not to raise memory_max."""
    used = _usage(100, Cgroup(50 << 20, 4 << 30, oom_kills=1, peak=1 << 30))
    watch, posted = _watch(Snapshot(notebooks=(used,), owners={100: K}))
    watch.sampled(Snapshot(notebooks=(used,)))
    (kill,) = posted
    assert (kill.limit_bytes, kill.own_limit) == (4 << 30, None)


def test_a_cgroup_of_anyone_elses_named_for_a_kernel_names_none() -> None:
    """Another user's own cgroup called kernel-<id of ours>, or ours for a kernel that is
    not running: no kill of that notebook's told."""
    snap = Snapshot(notebooks=(_usage(100, Cgroup(2 << 30, 2 << 30)),), owners={100: K})
    watch, posted = _watch(snap)
    gone = "0a1b2c3d-0000-4000-8000-000000000000"
    for memcg in (
        f"/user.slice/user-1001.slice/user@1001.service/kernel-{K}",
        f"{KERNELS}/kernel-{gone}",
    ):
        for line in _oom(999_999_997, memcg=memcg, task="python3"):
            watch.line(line)
    assert posted == []


def test_a_kill_of_a_process_that_is_not_ours_is_not_reported() -> None:
    watch, posted = _watch(Snapshot(owners={100: K}))
    for line in _oom(999_999_998, task="other user's"):
        watch.line(line)
    assert posted == []


def test_a_kill_below_jupyterlab_that_is_no_kernels_is_reported_as_ours() -> None:
    """Here the test process plays JupyterLab: it is the victim's ancestor."""
    lab = Endpoint("", "", os.getppid(), 0, "/")
    watch, posted = _watch(Snapshot(), lab)
    for line in _oom(os.getpid(), task="bash"):
        watch.line(line)
    (kill,) = posted
    assert kill.kernel_id is None and kill.notebook == "" and kill.process == "bash"


def test_without_the_kernel_log_the_kernels_cgroup_counts_and_only_once() -> None:
    """Under the shipped unit the kernel log is hidden: a kernel's own cgroup says it."""
    used = _usage(100, Cgroup(50 << 20, 1 << 30, oom_kills=1, peak=1 << 30))
    watch, posted = _watch(Snapshot(notebooks=(used,), owners={100: K, 4242: K}))
    watch.sampled(Snapshot(notebooks=(used,)))
    watch.sampled(Snapshot(notebooks=(used,)))  # the same count again: nothing new
    (kill,) = posted
    assert (kill.kernel_id, kill.notebook, kill.pid) == (K, NOTEBOOK, None)
    assert kill.memory_bytes == 1 << 30 and kill.limit_bytes == 1 << 30
    # The log told of the next one first: the cgroup's count does not tell it again.
    for line in _oom(4242, memcg=f"{KERNELS}/kernel-{K}"):
        watch.line(line)
    again = _usage(100, Cgroup(50 << 20, 1 << 30, oom_kills=2, peak=1 << 30))
    watch.sampled(Snapshot(notebooks=(again,)))
    assert [k.pid for k in posted] == [None, 4242]
    # A process of its tree outside its cgroup (forked before the kernel was placed): the
    # log alone tells it, and the cgroup's next kill is still told.
    for line in _oom(4242, memcg="/svc"):
        watch.line(line)
    third = _usage(100, Cgroup(50 << 20, 1 << 30, oom_kills=3, peak=1 << 30))
    watch.sampled(Snapshot(notebooks=(third,)))
    assert [k.pid for k in posted] == [None, 4242, 4242, None]


def test_a_kernel_started_since_the_last_round_is_named_from_its_launch() -> None:
    """Killed and reaped before the sampler saw it: the kernel manager told of its pid."""
    posted: list = []
    watch = OomWatch(
        posted.append, lambda: Snapshot(), lambda: None, lambda _c: None, lambda: {999_999_997: K}
    )
    for line in _oom(999_999_997):
        watch.line(line)
    (kill,) = posted
    assert kill.kernel_id == K and kill.pid == 999_999_997


def _following(watch: OomWatch, loop: asyncio.AbstractEventLoop) -> None:
    """Follow the real kernel log, as `jlservice run` does as root (the test's lines are
    handed to line() as its reader would)."""
    if (problem := watch.start(loop)) is not None:
        pytest.skip(problem)


def test_one_kill_counts_once_whether_its_cgroup_or_its_log_line_comes_first() -> None:
    """Linux counts a kill in the kernel's cgroup, then logs it: a round may read the counter
    before the line is read, or after; in a burst, Linux leaves out the summary line that
    names the cgroup (rate-limited). Every way: one kill (of the kernel's process) told,
    with its pid."""
    cgroup = f"{KERNELS}/kernel-{K}"

    def killed(count: int) -> Snapshot:
        used = _usage(100, Cgroup(50 << 20, 1 << 30, oom_kills=count, peak=1 << 30))
        return Snapshot(notebooks=(used,), owners={100: K}, kernel_states={}, kernels={K})

    async def run(counter_first: bool, summary: bool) -> list:
        counter = {"now": 0}
        posted: list = []
        watch = OomWatch(
            posted.append,
            lambda: killed(counter["now"]),
            lambda: None,
            lambda _c: None,
            kernels_cgroup=KERNELS,
            kills=lambda kernel_id: counter["now"] if kernel_id == K else None,
        )
        _following(watch, asyncio.get_running_loop())
        try:
            watch.sampled(killed(0))
            counter["now"] = 1  # the kill: counted first
            if counter_first:
                watch.sampled(killed(1))
            for line in _oom(100, memcg=cgroup)[0 if summary else 1 :]:
                watch.line(line)
            for _ in range(3):
                watch.sampled(killed(1))
        finally:
            watch.close()
        return posted

    for counter_first in (True, False):
        for summary in (True, False):
            posted = asyncio.run(run(counter_first, summary))
            told = [(k.kernel_id, k.pid) for k in posted]
            assert told == [(K, 100)], (counter_first, summary)


def test_a_kill_whose_line_never_comes_is_told_a_round_later() -> None:
    """The log is followed but its line is lost (overwritten, rate-limited): the cgroup's
    counter tells it at the round after the one that first showed it."""

    async def run() -> list:
        posted: list = []
        watch = OomWatch(posted.append, Snapshot, lambda: None, lambda _c: None)
        _following(watch, asyncio.get_running_loop())
        used = _usage(100, Cgroup(50 << 20, 1 << 30, oom_kills=1, peak=1 << 30))
        try:
            watch.sampled(Snapshot(notebooks=(used,)))
            assert posted == []
            watch.sampled(Snapshot(notebooks=(used,)))
        finally:
            watch.close()
        return posted

    assert [(k.kernel_id, k.pid) for k in asyncio.run(run())] == [(K, None)]


def test_a_kernels_kill_is_told_to_jupyterlabs_tabs_and_no_other() -> None:
    told: list = []
    lab = Endpoint("", "", os.getppid(), 0, "/")
    snap = Snapshot(notebooks=(_usage(100),), owners={100: K, 4242: K})
    watch = OomWatch(
        [].append, lambda: snap, lambda: lab, {"/svc": 1 << 30}.get, tell_lab=told.append
    )
    for line in [*_oom(4242), *_oom(os.getpid(), task="bash")]:  # the second: JupyterLab's
        watch.line(line)
    (kill,) = told
    assert (kill.kernel_id, kill.notebook, kill.limit_bytes) == (K, NOTEBOOK, 1 << 30)
