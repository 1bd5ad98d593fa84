"""Kernels into cgroups of their own (kernels.limits, kernels.placer) with a real memory
cgroup the test makes (v1 on this machine; v2 where the controller is there), standing in
for the one systemd delegates; and why limits are off where they cannot hold."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
from helpers.cgroup import OwnCgroup, own_cgroup
from helpers.procs import wait_for

from jlservice import users
from jlservice.kernels import limits
from jlservice.kernels import placer as placer_module
from jlservice.kernels.placer import Placer

K = "3f1c2a9e-6b1d-4c57-9d0e-8a1b2c3d4e5f"
MIB = 2**20


@pytest.fixture
def delegated() -> Iterator[OwnCgroup]:
    if os.geteuid() != 0:
        pytest.skip("needs root: a memory cgroup of the test's own")
    with own_cgroup() as made:  # removes kernels/ and every kernel-<id> in it too
        (made.path / limits.KERNELS).mkdir()
        yield made


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A child of the test process (which plays JupyterLab) naming kernel K's file."""
    code = "import sys, time; sys.stdin.readline(); b = b'x' * (200 << 20); time.sleep(60)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "-f", str(tmp_path / f"kernel-{K}.json")],
        stdin=subprocess.PIPE,
    )
    yield proc
    proc.kill()
    proc.wait()


def test_a_kernel_past_its_limit_is_killed_in_its_own_cgroup(delegated, kernel) -> None:
    found = limits.Limits(delegated.memory, delegated.name, 100 * MIB)
    found.place(K, kernel.pid)
    own = f"{delegated.name}/kernels/kernel-{K}"
    assert delegated.memory.of(kernel.pid) == own
    assert found.cgroup(K).limit == 100 * MIB
    kernel.stdin.write(b"go\n")
    kernel.stdin.flush()
    assert kernel.wait(timeout=30) == -9  # the OOM killer, in that cgroup only
    found.sweep({K})
    assert (delegated.path / "kernels" / f"kernel-{K}").exists()  # a running kernel's stays
    found.sweep(set())
    assert not (delegated.path / "kernels" / f"kernel-{K}").exists()


def test_a_new_limit_holds_for_running_kernels(delegated, kernel) -> None:
    found = limits.Limits(delegated.memory, delegated.name, None)
    found.place(K, kernel.pid)
    assert found.cgroup(K).limit is None
    found.apply(300 * MIB)
    assert found.cgroup(K).limit == 300 * MIB


class Launched:  # what the placer reads of a Launch: the test process plays JupyterLab
    account = users.current()

    def __init__(self, runtime: Path) -> None:
        self.jupyter_runtime_dir = runtime


async def _ask(placer: Placer, path: Path, request: dict) -> str:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(json.dumps(request).encode() + b"\n")
    try:
        answer = (await reader.readline()).decode().strip()
    except ConnectionResetError:  # closed with the request unread
        answer = ""
    writer.close()
    return answer


def _serving(placer: Placer, path: Path, *requests: dict) -> list[str]:
    async def run() -> list[str]:
        await placer.start(path, Launched.account)
        try:
            return [await _ask(placer, path, r) for r in requests]
        finally:
            placer.close()

    return asyncio.run(run())


def test_only_jupyterlab_may_place_only_its_kernel(delegated, kernel, tmp_path) -> None:
    """The test process plays JupyterLab: its child is the kernel."""
    placer = Placer(limits.Limits(delegated.memory, delegated.name, 200 * MIB))
    path = tmp_path / "kernels.sock"
    own = f"{delegated.name}/kernels/kernel-{K}"
    placer.serve_for(os.getpid() + 10**6, Launched(tmp_path))  # some other JupyterLab
    assert _serving(placer, path, {"kernel_id": K, "pid": kernel.pid}) == [""]  # closed unread
    placer.serve_for(os.getpid(), Launched(tmp_path))
    other = "0a1b2c3d-0000-4000-8000-000000000000"
    not_kernel, not_child, ok = _serving(
        placer,
        path,
        {"kernel_id": other, "pid": kernel.pid},
        {"kernel_id": K, "pid": os.getppid()},
        {"kernel_id": K, "pid": kernel.pid},
    )
    assert "is not kernel" in not_kernel and "not JupyterLab's child" in not_child
    assert ok == "ok"
    assert delegated.memory.of(kernel.pid) == own
    assert placer.names() == {kernel.pid: K}
    kernel.kill()
    kernel.wait()
    placer.seen({})  # a round after the kernel's death (its pid free for another process)
    assert placer.names() == {}


def test_a_kernel_that_ends_while_checked_is_not_placed(
    delegated, kernel, tmp_path, monkeypatch
) -> None:
    """Its pid may be another process's by the time it would be written to cgroup.procs:
    the checks hold only for the process the placer holds a pidfd of, while it runs."""
    placer = Placer(limits.Limits(delegated.memory, delegated.name, 200 * MIB))
    placer.serve_for(os.getpid(), Launched(tmp_path))
    checked = placer_module._not_its_kernel

    def ends_meanwhile(*args):
        problem = checked(*args)
        kernel.kill()
        kernel.wait()  # reaped: its pid free for anyone's next process
        return problem

    monkeypatch.setattr(placer_module, "_not_its_kernel", ends_meanwhile)
    (answer,) = _serving(placer, tmp_path / "kernels.sock", {"kernel_id": K, "pid": kernel.pid})
    assert answer == f"no process {kernel.pid}"
    assert not (delegated.path / "kernels" / f"kernel-{K}").exists()
    assert placer.names() == {}


def test_a_check_that_hangs_is_given_up_and_later_asks_are_refused_until_it_returns(
    kernel, tmp_path, monkeypatch
) -> None:
    """A /proc read of the lab user's process may wait as long as that process likes: the
    ask is answered after TIMEOUT_S, the next at once, and none keeps jlservice from
    exiting (the checking thread is a daemon)."""
    monkeypatch.setattr(placer_module, "TIMEOUT_S", 0.5)
    released = threading.Event()
    checked = placer_module._not_its_kernel

    def hangs(*args):
        released.wait(30)
        return checked(*args)

    monkeypatch.setattr(placer_module, "_not_its_kernel", hangs)
    placer = Placer(None)
    placer.serve_for(os.getpid(), Launched(tmp_path))
    path, ask = tmp_path / "kernels.sock", {"kernel_id": K, "pid": kernel.pid}

    async def run() -> list[str]:
        await placer.start(path, Launched.account)
        try:
            answers = [await _ask(placer, path, ask), await _ask(placer, path, ask)]
            thread = next(t for t in threading.enumerate() if t.name == "jlservice-placer")
            assert thread.daemon
            released.set()
            for _ in range(100):  # the hung check returns: asks are answered again
                if (answer := await _ask(placer, path, ask)) == "ok":
                    break
                await asyncio.sleep(0.05)
            return [*answers, answer]
        finally:
            released.set()
            placer.close()

    slow, refused, ok = asyncio.run(run())
    assert slow == f"refused: checking process {kernel.pid} took over 0.5 s"
    assert refused == "refused: jlservice is still checking an earlier kernel"
    assert ok == "ok"


def test_another_user_cannot_reach_the_socket(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: another user")
    run = Path(tempfile.mkdtemp(prefix="jlservice-placer-"))
    try:
        run.chmod(0o711)  # as the private dir: others may pass, not list
        placer = Placer(None)
        path = run / "kernels.sock"

        async def other_user() -> str:
            await placer.start(path, Launched.account)
            code = (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.errno)\n"
                "else:\n    print('connected')"
            )
            argv = [sys.executable, "-c", code, str(path)]
            proc = await asyncio.create_subprocess_exec(
                *argv, user=65534, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            placer.close()
            return out.decode().strip()

        assert asyncio.run(other_user()) == str(errno.EACCES)
    finally:
        shutil.rmtree(run)


async def _eof(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionResetError):
        await reader.read()


def test_silent_connections_hold_no_more_than_a_few_fds(tmp_path) -> None:
    """The running JupyterLab itself (the only one let in) opens 100 connections and sends
    nothing: those past the cap are closed at once, unread; jlservice holds the cap."""
    placer = Placer(None)
    path = tmp_path / "kernels.sock"
    placer.serve_for(os.getpid(), Launched(tmp_path))

    async def run() -> tuple[int, int, int]:
        await placer.start(path, Launched.account)
        base = len(os.listdir("/proc/self/fd"))
        conns = [await asyncio.open_unix_connection(str(path)) for _ in range(100)]
        reads = [asyncio.ensure_future(_eof(r)) for r, _ in conns]
        past = 100 - placer_module.MAX_CONNECTIONS
        while sum(r.done() for r in reads) < past:  # each EOF: one closed by the placer
            await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED, timeout=1)
        held = len(os.listdir("/proc/self/fd")) - base - 100  # the placer's side
        still = sum(not r.done() for r in reads)
        for r in reads:
            r.cancel()
        for _, w in conns:
            w.close()
        placer.close()
        return held, still, placer_module.MAX_CONNECTIONS

    held, still, cap = asyncio.run(run())
    assert still == cap  # the first few wait for their request (TIMEOUT_S)
    assert held <= cap


def test_kernel_cgroups_are_capped(tmp_path) -> None:
    """A JupyterLab that places child after child under new ids: past the cap, refused
    (memory cgroup ids are a system-wide resource). Plain files stand in for cgroupfs."""
    from jlservice.kernels.cgroups import Memory

    unit = tmp_path / "jlservice.service"
    found = limits.Limits(Memory(tmp_path, 2), "/jlservice.service", None)
    for n in range(limits.MAX_KERNEL_CGROUPS):
        (unit / "kernels" / f"kernel-{n}").mkdir(parents=True)
    with pytest.raises(ValueError, match="1024 kernel cgroups already"):
        found.place(K, 4242)
    assert not (unit / "kernels" / f"kernel-{K}").exists()


def test_without_systemd_limits_are_off_and_say_why() -> None:
    found, why = limits.set_up(4 << 30, True, environ={})
    assert found is None and why == (
        "off: jlservice does not run under systemd (no cgroup delegated to it)"
    )
    found, why = limits.set_up(4 << 30, False, environ={"INVOCATION_ID": "x"})
    assert found is None and "survive_restarts = true" in why


def test_on_cgroup_v2_jlservice_leaves_the_units_cgroup_first(tmp_path, monkeypatch) -> None:
    """What cgroup v2 asks (a cgroup that divides its memory holds no process): jlservice
    moves itself into supervisor/, then enables +memory below; a kernel's limit is written
    before the kernel is moved in. The cgroup files are plain files here: the writes, in
    their order, not the kernel's semantics."""
    from jlservice.kernels.cgroups import Memory

    unit = tmp_path / "system.slice" / "jlservice.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.procs").write_text(f"{os.getpid()}\n")
    writes: list[tuple[str, str]] = []
    real = Path.write_text

    def recorded(path: Path, text: str, *args, **kwargs) -> int:
        writes.append((str(path.relative_to(unit)), text))
        return real(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", recorded)
    limits._prepare(Memory(tmp_path, 2), "/system.slice/jlservice.service")
    assert writes == [
        ("supervisor/cgroup.procs", str(os.getpid())),
        ("cgroup.subtree_control", "+memory"),
        ("kernels/cgroup.subtree_control", "+memory"),
    ]
    writes.clear()
    found = limits.Limits(Memory(tmp_path, 2), "/system.slice/jlservice.service", 256 * MIB)
    found.place(K, 4242)
    found.apply(None)
    assert writes == [
        (f"kernels/kernel-{K}/memory.max", str(256 * MIB)),
        (f"kernels/kernel-{K}/cgroup.procs", "4242"),
        (f"kernels/kernel-{K}/memory.max", "max"),
    ]


def test_limits_hold_only_in_a_cgroup_systemd_delegated(tmp_path) -> None:
    """systemd's word that the unit's cgroup is jlservice's: its mark on the cgroup in the
    v2 hierarchy, else the unit's Delegate= as systemctl says it; else limits are off."""
    base = "/system.slice/jlservice.service"
    unit = tmp_path / base.lstrip("/")
    unit.mkdir(parents=True)
    asked: list[str] = []

    def says(answer: str | None):
        return lambda name: asked.append(name) or answer

    assert not limits.delegated(base, tmp_path, says("no"))
    assert not limits.delegated(base, tmp_path, says(None))  # systemctl did not answer
    assert not limits.delegated(base, None, says(""))
    assert limits.delegated(base, None, says("yes"))
    assert asked == ["jlservice.service"] * 4
    try:
        os.setxattr(unit, "user.delegate", b"1")
    except OSError as exc:
        pytest.skip(f"no user xattrs on {tmp_path}: {exc.strerror}")
    assert limits.delegated(base, tmp_path, says("no"))
    assert len(asked) == 4  # the mark is enough


def test_a_slow_check_of_a_kernel_never_holds_jlservices_loop(tmp_path, monkeypatch) -> None:
    """Reading a process's /proc files blocks for as long as that process (the lab user's)
    holds its memory map's lock: the check runs beside the loop, which goes on meanwhile."""
    loop_ran = threading.Event()

    def hung(*args) -> str:
        loop.call_soon_threadsafe(loop_ran.set)  # runs only if the loop is free
        return "ran beside" if loop_ran.wait(10) else "held the loop"

    monkeypatch.setattr(placer_module, "_not_its_kernel", hung)
    placer = Placer(None)
    placer.serve_for(os.getpid(), Launched(tmp_path))
    loop = asyncio.new_event_loop()
    try:
        path = tmp_path / "kernels.sock"
        (answer,) = loop.run_until_complete(_ask_started(placer, path, {"kernel_id": K, "pid": 1}))
    finally:
        loop.close()
    assert answer == "ran beside"


async def _ask_started(placer: Placer, path: Path, *requests: dict) -> list[str]:
    await placer.start(path, Launched.account)
    try:
        return [await _ask(placer, path, r) for r in requests]
    finally:
        placer.close()


def test_a_kernel_asked_for_as_soon_as_it_was_launched_is_placed(tmp_path) -> None:
    """The kernel manager asks once its launch returned: the exec has closed the launcher's
    pipe then, but Linux may not have set the new command line up yet (empty in /proc)."""
    placer = Placer(None)
    placer.serve_for(os.getpid(), Launched(tmp_path))
    path = tmp_path / "kernels.sock"
    loop = asyncio.new_event_loop()
    loop.run_until_complete(placer.start(path, Launched.account))
    serving = threading.Thread(target=loop.run_forever, daemon=True)
    serving.start()
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "-f"]
    answers = []
    try:
        for n in range(20):
            kernel_id = f"{n:08x}-6b1d-4c57-9d0e-8a1b2c3d4e5f"
            with socket.socket(socket.AF_UNIX) as asker:
                asker.connect(str(path))
                with subprocess.Popen([*argv, str(tmp_path / f"kernel-{kernel_id}.json")]) as proc:
                    asker.sendall(
                        json.dumps({"kernel_id": kernel_id, "pid": proc.pid}).encode() + b"\n"
                    )
                    answers.append(asker.makefile().readline().strip())
                    proc.kill()
    finally:
        loop.call_soon_threadsafe(placer.close)
        loop.call_soon_threadsafe(loop.stop)
        serving.join(10)
        loop.close()
    assert answers == ["ok"] * 20


def test_a_lower_limit_v1_refuses_is_logged_and_the_old_one_is_said(delegated, kernel) -> None:
    """cgroup v1 refuses (EBUSY) a limit below what a kernel uses, when it cannot reclaim
    (no swap): the kernel keeps its old limit, and jlservice says so instead of the new."""
    if delegated.memory.version != 1:
        pytest.skip("cgroup v2 takes a memory.max below use (it reclaims, or OOM-kills)")
    found = limits.Limits(delegated.memory, delegated.name, 300 * MIB)
    found.place(K, kernel.pid)
    kernel.stdin.write(b"\n")
    kernel.stdin.flush()
    wait_for(lambda: found.cgroup(K).charge > 200 * MIB, 30, "the kernel's 200 MiB")
    with structlog.testing.capture_logs() as logged:
        found.apply(100 * MIB)
    assert found.cgroup(K).limit == 300 * MIB
    (kept,) = [e for e in logged if e["event"] == "kernel_limit_kept"]
    assert kept["kernel_id"] == K and kept["limit_bytes"] == 300 * MIB, kept
    said = found.describe()
    assert said.startswith(f"on: {100 * MIB} bytes per kernel, but 1 kernel(s) kept"), said
    assert f"({K} {300 * MIB})" in said
    found.apply(400 * MIB)  # raising it holds for every kernel again
    assert found.cgroup(K).limit == 400 * MIB and "kept" not in found.describe()
