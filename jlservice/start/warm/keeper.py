"""The supervisor's side of warm restarts: keep one warm parent ready, ask it to fork.

A warm parent is made in the background (after JupyterLab is ready, so that its imports
never compete with a start) and replaced when what it baked in changes: the recipe (command,
interpreter, user, environment) or the files under its watched paths (installed packages,
Jupyter config and extensions: it watches them itself, as the lab user, and exits once they
change), or when it dies. Whenever it cannot serve a start — missing,
still importing, stale, broken, or the command does not qualify — `fork` says why and the
supervisor starts JupyterLab cold. The warm parent runs as the lab user, who can make it say
anything: every message is size-capped, parsed within bounds and checked, and one that is not
what was asked for retires it — never the supervisor.
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
from collections.abc import Callable
from importlib import resources

import psutil

from jlservice import bounded, log, procfs, state
from jlservice.start import cold, launcher
from jlservice.start.warm.recipe import Recipe, for_launch
from jlservice.supervisor import children

logger = log.get("jlservice.warm")

HELLO_TIMEOUT_S = 120.0  # imports on a loaded machine; a cold start is never waiting on it
FORK_TIMEOUT_S = 5.0
EXIT_STALE = 3  # the warm parent's exit once its paths changed (parent.EXIT_STALE)
MAX_MESSAGE = 1 << 16
MAX_ERROR = 500  # characters of a warm parent's error kept for the log
BOOTSTRAP = "import sys;exec(compile(sys.stdin.read(),'jlservice-warm-parent','exec'))"
_PROGRAM = resources.files("jlservice.start.warm").joinpath("parent.py")
_STALE = "packages or Jupyter configuration changed"
# What the warm parent may say: {"pid": N}, {"error": "why"}, {"stale": true} (at a fork),
# {"fresh": true} (to a check).
_FIELDS = {"pid": int, "error": str, "stale": bool, "fresh": bool}


def _parse(raw: bytes, expected: tuple[str, ...]) -> tuple[str, int | str | bool]:
    """The one field of a message from the warm parent, if it is one of `expected`;
    bounded.Malformed (a ValueError) for anything else."""
    message = bounded.loads(raw, MAX_MESSAGE)
    if isinstance(message, dict) and len(message) == 1:
        ((key, value),) = message.items()
        if key in expected and type(value) is _FIELDS[key]:
            return key, value[:MAX_ERROR] if isinstance(value, str) else value
    raise bounded.Malformed(f"not a message of the form {{{' | '.join(expected)}: …}}")


def _forked_by(pid: object, launch: launcher.Launch, reaper: children.Reaper) -> bool:
    """Whether `pid` is a server just forked for us: our child (the warm parent replies once
    the fork's intermediate is reaped), running as the lab user — or already exited as our
    child. The warm parent runs as that user, so what it says is checked before root
    signals or waits for the pid."""
    if not isinstance(pid, int) or pid <= 1:
        return False
    if reaper.reaped(pid):
        return True
    try:
        server = psutil.Process(pid)
        return server.ppid() == os.getpid() and server.uids().real == launch.account.uid
    except psutil.Error:
        return reaper.reaped(pid)  # exited meanwhile


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
        """Kill it (its exit is reaped by the supervisor) and close our end."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.close()

    def close(self) -> None:
        """Close our end; whoever awaits a message from it gets ConnectionAbortedError."""
        self._stop_reading()  # now: the fd number may be reused before callbacks run
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(ConnectionAbortedError("the warm parent was retired"))
        self.sock.close()


class Keeper:
    def __init__(self, reaper: children.Reaper, changed: Callable[[], None]) -> None:
        """`changed`: called whenever describe() may say something new."""
        self.reaper = reaper
        self.parent: WarmProcess | None = None
        self.enabled = False
        self._changed = changed
        self._launch: launcher.Launch | None = None
        self._unavailable: str | None = None  # why the command cannot start warm
        # Why the warm parent failed, and for which launch: not tried again until it changes.
        self._failed: tuple[launcher.Launch, str] | None = None
        self._ending: set[int] = set()  # ended parents not reaped yet

    # ── what the supervisor calls ───────────────────────────────────────────

    def keep(self, launch: launcher.Launch, enabled: bool) -> None:
        """Have a warm parent for `launch` (made in the background), or none if disabled."""
        self._launch, self.enabled = launch, enabled
        if not enabled:
            self._retire("warm restarts turned off")
            return
        recipe = for_launch(launch)
        if isinstance(recipe, str):
            if recipe != self._unavailable:
                logger.info("warm_parent_unavailable", reason=recipe)
            self._unavailable = recipe
            self._retire(recipe)
            return
        self._unavailable = None
        parent = self.parent
        if parent is not None and parent.recipe == recipe:
            if parent.ready and not parent.checking:
                self._check(parent)
            return
        if parent is not None:
            self._retire("configuration changed")
        if self._failed is not None and self._failed[0] == launch:
            return
        self._failed = None
        self._spawn(recipe)

    async def fork(self, launch: launcher.Launch, output: int) -> int | None:
        """Start `launch` from the warm parent with `output` as its stdout and stderr.

        Returns the server's pid, or None (with the reason logged) to start cold.
        """
        if not self.enabled:
            return None
        parent = self.parent
        recipe = for_launch(launch)
        why = self._unusable(parent, recipe)
        if why is not None:
            logger.info("lab_start_cold", reason=why)
            return None
        assert parent is not None
        request = {
            "argv": parent.recipe.args(launch),
            "module": parent.recipe.module,
            "cwd": launch.cwd,
            "umask": launch.umask,
            "supervisor": os.getpid(),
        }
        self.reaper.expect_adoption()  # an exit reaped from now on may be the new server's
        try:
            socket.send_fds(parent.sock, [json.dumps(request).encode()], [output])
            raw = await asyncio.wait_for(parent.receive(), FORK_TIMEOUT_S)
            if not raw:
                raise ConnectionAbortedError("it exited")
            kind, value = _parse(raw, ("pid", "error", "stale"))
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            problem = str(exc) or f"no answer within {FORK_TIMEOUT_S:g} s"
            logger.warning("warm_parent_broken", pid=parent.pid, problem=problem)
            if parent is self.parent:  # not retired meanwhile; replaced once JupyterLab is ready
                self._retire("broken")
            logger.info("lab_start_cold", reason=f"warm parent did not answer: {problem}")
            return None
        if kind == "error":  # e.g. the notebook dir is not accessible: a cold start says so
            logger.info("lab_start_cold", reason=f"warm start failed: {value}")
            return None
        if kind == "stale":  # a new one is made once JupyterLab is ready
            if parent is self.parent:
                self._retire(_STALE)
            logger.info("lab_start_cold", reason=f"{_STALE} since the warm parent started")
            return None
        pid = value
        if not _forked_by(pid, launch, self.reaper):
            logger.warning("warm_parent_broken", pid=parent.pid, problem=f"reported pid {pid}")
            if parent is self.parent:
                self._retire("broken")
            logger.info("lab_start_cold", reason="the warm parent reported a foreign pid")
            return None
        return pid

    def spare(self) -> set[int]:
        """Processes a sweep for leftovers must leave alone."""
        return {self.parent.pid, *self._ending} if self.parent else set(self._ending)

    def describe(self) -> state.WarmParent | None:
        """Which warm parent, and whether it can serve a start (state.json, metrics)."""
        if self.parent is None:
            return None
        return state.WarmParent(self.parent.pid, self.parent.ready and not self.parent.checking)

    def distrust(self, launch: launcher.Launch, problem: str) -> None:
        """A server it forked for `launch` failed to start: start cold until the launch
        changes (as after a failed import), in case the fork, not the launch, is to blame."""
        if self.parent is not None:
            self._fail(problem, launch)
            self._retire(problem)

    def close(self) -> None:
        self.enabled = False
        self._retire("stopping")

    # ── inside ──────────────────────────────────────────────────────────────

    def _unusable(self, parent: WarmProcess | None, recipe: Recipe | str) -> str | None:
        if isinstance(recipe, str):
            return recipe
        if parent is None:
            return self._failed[1] if self._failed else "no warm parent yet"
        if not parent.ready:
            return "the warm parent is still importing JupyterLab"
        if parent.checking:
            return "the warm parent is checking its packages and Jupyter configuration"
        if parent.recipe != recipe:
            return "the configuration changed since the warm parent started"
        return None

    def _spawn(self, recipe: Recipe) -> None:
        try:
            parent = WarmProcess.spawn(recipe)
        except OSError as exc:
            self._fail(f"cannot start {recipe.interpreter}: {exc.strerror}")
            return
        self.parent = parent
        self.reaper.watch(parent.pid).add_done_callback(lambda f: self._exited(parent, f.result()))
        asyncio.get_running_loop().create_task(self._hello(parent))
        self._changed()
        logger.debug("warm_parent_starting", pid=parent.pid, preload=list(recipe.preload))

    async def _hello(self, parent: WarmProcess) -> None:
        """Its "ready", or why not."""
        problem = None
        try:
            raw = await asyncio.wait_for(parent.receive(), HELLO_TIMEOUT_S)
            if not raw:
                raise ConnectionAbortedError("exited while importing")
            kind, value = _parse(raw, ("pid", "error"))
            if kind == "error":
                raise ValueError(value)
            if value != parent.pid:
                raise ValueError(f"said it is pid {value}, not {parent.pid}")
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            problem = str(exc) or f"not ready within {HELLO_TIMEOUT_S:g} s"
        if parent is not self.parent:
            return  # retired meanwhile
        if problem is not None:
            self._fail(problem)
            self._retire(problem)
            return
        parent.ready = True
        self._changed()
        logger.info(
            "warm_parent_ready",
            pid=parent.pid,
            import_s=round(time.monotonic() - parent.spawned, 3),
            rss_mib=round((procfs.rss_bytes(parent.pid) or 0) / 2**20, 1),
        )

    def _check(self, parent: WarmProcess) -> None:
        """Ask whether its packages or Jupyter configuration changed since it started, as
        it sees them (root never looks at its paths): it exits with EXIT_STALE if so, else
        answers "fresh". JupyterLab may have just changed them (e.g. made ~/.jupyter).
        Not ready until then, as state.json says at once."""
        parent.checking = True
        self._changed()
        asyncio.get_running_loop().create_task(self._fresh(parent))

    async def _fresh(self, parent: WarmProcess) -> None:
        try:
            parent.sock.send(b'{"check": true}')
            raw = await asyncio.wait_for(parent.receive(), FORK_TIMEOUT_S)
            if not raw:
                return  # it exited: its status says why
            _parse(raw, ("fresh",))
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            if parent is self.parent:
                problem = str(exc) or f"no answer within {FORK_TIMEOUT_S:g} s"
                logger.warning("warm_parent_broken", pid=parent.pid, problem=problem)
                self._retire("broken")
            return
        parent.checking = False
        if parent is self.parent:
            self._changed()

    def _fail(self, problem: str, launch: launcher.Launch | None = None) -> None:
        launch = launch or self._launch
        assert launch is not None
        self._failed = (launch, problem)
        logger.warning(
            "warm_parent_failed",
            problem=problem,
            effect="JupyterLab starts cold until [lab] changes or jlservice restarts",
        )

    def _exited(self, parent: WarmProcess, status: children.ExitStatus) -> None:
        self._ending.discard(parent.pid)
        if parent is not self.parent:
            return
        self.parent = None
        parent.close()  # reaped: its pid may already belong to another process
        self._changed()
        if not parent.ready:
            if self._failed is None:
                self._fail(f"warm parent {status.describe()} while importing")
            return
        if status.code == EXIT_STALE:
            logger.info("warm_parent_retired", pid=parent.pid, reason=_STALE)
        else:
            logger.warning("warm_parent_exited", pid=parent.pid, status=status.describe())
        if self._launch is not None:
            self.keep(self._launch, self.enabled)  # a new one, in the background

    def _retire(self, reason: str) -> None:
        parent, self.parent = self.parent, None
        if parent is not None:
            logger.info("warm_parent_retired", pid=parent.pid, reason=reason)
            self._ending.add(parent.pid)
            parent.end()
            self._changed()
