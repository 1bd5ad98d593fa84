"""One warm parent process: how it is spawned as the lab user, and what it may say.

The warm parent runs as the lab user, who can make it say anything: every message is
size-capped and parsed within bounds, and only the one field asked for is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from importlib import resources

from jlservice import bounded, oom_score
from jlservice.start import cold
from jlservice.start.warm.recipe import Recipe

EXIT_STALE = 3  # the warm parent's exit once its paths changed (parent.EXIT_STALE)
MAX_MESSAGE = 1 << 16
MAX_ERROR = 500  # characters of a warm parent's error kept for the log
BOOTSTRAP = "import sys;exec(compile(sys.stdin.read(),'jlservice-warm-parent','exec'))"
_PROGRAM = resources.files("jlservice.start.warm").joinpath("parent.py")
# What the warm parent may say: {"pid": N}, {"error": "why"}, {"stale": true} (at a fork),
# {"fresh": true} (to a check).
_FIELDS = {"pid": int, "error": str, "stale": bool, "fresh": bool}


def parse(raw: bytes, expected: tuple[str, ...]) -> tuple[str, int | str | bool]:
    """The one field of a message from the warm parent, if it is one of `expected`;
    bounded.Malformed (a ValueError) for anything else."""
    message = bounded.loads(raw, MAX_MESSAGE)
    if isinstance(message, dict) and len(message) == 1:
        ((key, value),) = message.items()
        if key in expected and type(value) is _FIELDS[key]:
            return key, value[:MAX_ERROR] if isinstance(value, str) else value
    raise bounded.Malformed(f"not a message of the form {{{' | '.join(expected)}: …}}")


class WarmProcess:
    """One warm parent process and the socket it takes requests on."""

    def __init__(self, recipe: Recipe, pid: int, sock: socket.socket) -> None:
        self.recipe = recipe
        self.pid = pid
        self.sock = sock
        self.spawned = time.monotonic()
        self.ready = False
        self.checking = False  # asked whether its paths changed: no fork until it answers
        self._reply: asyncio.Future[bytes] | None = None
        self.exited: asyncio.Future[object] | None = None  # resolved once reaped

    @property
    def usable(self) -> bool:
        return self.ready and not self.checking

    @classmethod
    def spawn(cls, recipe: Recipe) -> WarmProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = {
            "socket": theirs.fileno(),
            "supervisor": os.getpid(),
            "interpreter": recipe.interpreter,
            "script": recipe.script,
            "argv0": recipe.script or "-m",
            "path0": recipe.path0,
            "preload": list(recipe.preload),
        }
        try:
            proc = subprocess.Popen(
                [recipe.interpreter, "-c", BOOTSTRAP, json.dumps(spec)],
                env=dict(recipe.env),
                cwd="/",
                umask=0o077,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                **cold.identity(recipe.account, recipe.switch_user),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        proc.returncode = 0  # reaped by the supervisor's Reaper, never by Popen
        oom_score.unprotect_child(proc.pid)  # before it has its program, so before it forks
        assert proc.stdin is not None
        with proc.stdin, contextlib.suppress(BrokenPipeError):
            # A few kB: fits in the pipe, so this does not block.
            proc.stdin.write(_PROGRAM.read_bytes())
        ours.setblocking(False)
        return cls(recipe, proc.pid, ours)

    def receive(self) -> asyncio.Future[bytes]:
        """The next message from the warm parent (b"" once it has gone), at most
        MAX_MESSAGE bytes; a descriptor sent with it is closed by the kernel."""
        loop = asyncio.get_running_loop()
        reply = self._reply = loop.create_future()
        fd = self.sock.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            if reply.done():
                return
            try:
                reply.set_result(self.sock.recv(MAX_MESSAGE))
            except OSError as exc:
                reply.set_exception(exc)

        loop.add_reader(fd, readable)
        reply.add_done_callback(lambda _: self._stop_reading())  # e.g. after a timeout
        return reply

    def _stop_reading(self) -> None:
        if self.sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())

    def end(self) -> None:
        """Kill it (its exit is reaped by the supervisor) and close our end. Once reaped,
        its pid may be another process's: never signalled then."""
        if self.exited is None or not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        """Close our end; whoever awaits a message from it gets ConnectionAbortedError."""
        self._stop_reading()  # now: the fd number may be reused before callbacks run
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(ConnectionAbortedError("the warm parent was retired"))
        self.sock.close()
