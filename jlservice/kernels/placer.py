"""Each new kernel told to jlservice as it starts, and put into its cgroup where kernels have
one: jlservice's kernel manager asks, on a unix socket in JupyterLab's private dir, right
after it launched the kernel (and before the kernel runs a cell), and waits for the answer.
jlservice remembers which pid is which kernel (`launched`): a kernel the OOM killer ends
before the sampler's next round is still named.

Only the running JupyterLab may ask (SO_PEERCRED names the process that connected), and only
for a kernel it started: its child, running as the lab user, naming the connection file of
the kernel id it asks for. The answer is one line: `ok`, or what went wrong.

The check and the placement run in a thread of their own (a daemon: jlservice's exit never
waits for it), one at a time, never on the loop: reading a process's /proc files (its
command line takes the lock of its memory map) blocks for as long as that process, the lab
user's, holds the lock — no size bound helps there — and a cgroup write waits for the
kernel's cgroup locks. A check that takes over TIMEOUT_S is given up on, and later asks are
refused until it returns. What the loop reads (`launched`, `running`) is only changed on
the loop.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
import time
from pathlib import Path

from jlservice import bounded, disk, log, oom_score, procfs, users
from jlservice.deadline import within
from jlservice.errors import NotAnswering
from jlservice.kernels.limits import Limits
from jlservice.labapi import connection_file_id
from jlservice.start.launcher import Launch

logger = log.get("jlservice.kernels")

MAX_REQUEST = 4096
TIMEOUT_S = 5.0
MAX_CONNECTIONS = 8  # at once; more are closed unread (each holds one of jlservice's fds)
MAX_CMDLINE = 64 * 1024  # read of a kernel's command line (its connection file is in it)
EXEC_WAIT_S = 1.0  # for a kernel's exec to set its command line up


class Placer:
    def __init__(self, limits: Limits | None) -> None:
        self.limits = limits
        self.lab: tuple[int, Launch] | None = None  # the JupyterLab that may ask, its launch
        # pid → (kernel id, start ticks), of kernels placed since the last round that saw them
        self.launched: dict[int, tuple[str, int]] = {}
        self.running: set[str] = set()  # kernel ids of the last round: their cgroups stay
        self._server: asyncio.AbstractServer | None = None
        self._open = 0
        self._worker: disk.OneThread | None = None

    def names(self) -> dict[int, str]:
        """pid → kernel id of the kernels placed since the last round."""
        return {pid: kernel_id for pid, (kernel_id, _) in self.launched.items()}

    def seen(self, owners: dict[int, str]) -> None:
        """A sampler round: what it saw, it names from now on; a kernel gone (or its pid now
        another process's) is forgotten."""
        self.launched = {
            pid: (k, ticks)
            for pid, (k, ticks) in self.launched.items()
            if pid not in owners and procfs.start_ticks(pid) == ticks
        }
        self.running = set(owners.values())

    async def start(self, path: Path, account: users.Account) -> None:
        path.unlink(missing_ok=True)
        self._worker = disk.OneThread("jlservice-placer")
        self._server = await asyncio.start_unix_server(self._serve, path)
        # The lab user's alone (root connects anyway); SO_PEERCRED says which process did.
        if os.geteuid() == 0:
            os.chown(path, account.uid, account.gid)
        os.chmod(path, 0o600)

    def serve_for(self, pid: int, launch: Launch) -> None:
        """From now on only JupyterLab `pid` may ask."""
        self.lab = (pid, launch)
        if self.limits is not None:
            self.limits.sweep(set())  # what the last one's kernels left (one in use stays)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._worker is not None:
            self._worker.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            sock = writer.get_extra_info("socket")
            if self._open > MAX_CONNECTIONS or _peer(sock) != self._lab_pid():
                return  # closed unread: only the running JupyterLab may ask, a few at once
            line = await within(TIMEOUT_S, reader.readline())
            writer.write((await self._answer(line)).encode() + b"\n")
            await within(TIMEOUT_S, writer.drain())
        except (OSError, asyncio.TimeoutError, ValueError):
            pass  # the asker gave up: its kernel runs without a limit, and it says so
        finally:
            self._open -= 1
            writer.close()

    def _lab_pid(self) -> int | None:
        return self.lab[0] if self.lab is not None else None

    async def _answer(self, line: bytes) -> str:
        assert self.lab is not None
        peer, launch = self.lab
        try:
            request = bounded.loads(line[:MAX_REQUEST], MAX_REQUEST)
            kernel_id, pid = str(request["kernel_id"]), int(request["pid"])
        except (ValueError, TypeError, KeyError):
            return "refused: not a request"
        # Empty cgroups of kernels gone are swept; a kernel restarting (after an OOM kill,
        # say) keeps its cgroup and the count of kills in it.
        spare = self.running | set(self.names().values()) | {kernel_id}
        assert self._worker is not None
        try:
            answer = self._worker.submit(
                lambda: self._check_and_place(pid, peer, kernel_id, launch, spare)
            )
        except NotAnswering:
            placed: str | int = "refused: jlservice is still checking an earlier kernel"
        else:
            done, _ = await asyncio.wait([asyncio.wrap_future(answer)], timeout=TIMEOUT_S)
            if done:
                placed = done.pop().result()
            else:  # a /proc file of the lab user's process that does not answer
                self._worker.gave_up(answer)
                placed = f"refused: checking process {pid} took over {TIMEOUT_S:g} s"
        if isinstance(placed, str):
            logger.error("kernel_unlimited", kernel_id=kernel_id[:64], pid=pid, problem=placed)
            return placed
        self.launched[pid] = (kernel_id, placed)
        logger.debug("kernel_placed", kernel_id=kernel_id, pid=pid)
        return "ok"

    def _check_and_place(
        self, pid: int, peer: int, kernel_id: str, launch: Launch, spare: set[str]
    ) -> str | int:
        """In the worker thread: what went wrong, or the start ticks of `pid` once placed."""
        try:
            pidfd = os.pidfd_open(pid)  # the process checked is the one placed, never a reuse
        except (OSError, OverflowError):
            return f"no process {pid}"
        try:
            return self._place(pidfd, pid, peer, kernel_id, launch, spare)
        finally:
            os.close(pidfd)

    def _place(
        self, pidfd: int, pid: int, peer: int, kernel_id: str, launch: Launch, spare: set[str]
    ) -> str | int:
        ticks = procfs.start_ticks(pid)
        problem = _not_its_kernel(pid, peer, kernel_id, launch)
        if problem is None and (ticks is None or not _alive(pidfd)):
            problem = f"no process {pid}"  # what was read of /proc may be another process's
        if problem is not None:
            return problem
        assert ticks is not None
        # As root: its floor too, which a cell cannot lower.
        oom_score.set_score(pid, oom_score.KERNEL)
        if self.limits is not None:
            before = self.limits.memory.of(pid)
            try:
                self.limits.sweep(spare)
                self.limits.place(kernel_id, pid)
            except (OSError, ValueError) as exc:
                return f"cannot place it: {exc}"
            if not _alive(pidfd):  # it ended: the pid written may have been another's
                if before is not None and procfs.start_ticks(pid) not in (None, ticks):
                    self.limits.move(pid, before)
                return f"process {pid} ended as it was placed"
        return ticks


def _alive(pidfd: int) -> bool:
    """A pidfd becomes readable once its process has ended (its pid may then be reused)."""
    return not select.select([pidfd], [], [], 0)[0]


def _command_line(pid: int) -> list[bytes]:
    """`pid`'s arguments, once its exec has set them up. The kernel manager asks as soon as
    its launch returned, which is when the exec closed the launcher's pipe: Linux sets the
    new command line up after that, and till then /proc says it is empty (seen under load)."""
    deadline = time.monotonic() + EXEC_WAIT_S
    while True:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(MAX_CMDLINE)
        if raw or time.monotonic() > deadline:
            return raw.split(b"\0")
        time.sleep(0.005)


def _peer(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[0])


def _not_its_kernel(pid: int, lab_pid: int, kernel_id: str, launch: Launch) -> str | None:
    """Why `pid` is not JupyterLab's kernel `kernel_id`, or None when it is."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        status = Path(f"/proc/{pid}/status").read_bytes().decode(errors="replace")
    except OSError:
        return f"no process {pid}"
    if int(stat.rpartition(b")")[2].split()[1]) != lab_pid:
        return f"process {pid} is not JupyterLab's child"
    uids = next((line.split()[1:3] for line in status.splitlines() if line.startswith("Uid:")), [])
    if [int(u) for u in uids] != [launch.account.uid] * 2:
        return f"process {pid} does not run as {launch.account.name}"
    try:  # only now: reading it waits on the process's memory map, which it may hold
        argv = _command_line(pid)
    except OSError:
        return f"no process {pid}"
    runtime = str(launch.jupyter_runtime_dir)
    if not any(connection_file_id(os.fsdecode(a), runtime) == kernel_id for a in argv):
        return f"process {pid} is not kernel {kernel_id[:64]}"
    return None
