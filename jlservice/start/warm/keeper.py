"""The supervisor's side of warm restarts: keep one warm parent ready, ask it to fork.

A warm parent is made in the background (after JupyterLab is ready, so that its imports
never compete with a start) and replaced when what it baked in changes: the recipe (command,
interpreter, user, environment) or the files under its watched paths (installed packages,
Jupyter config and extensions), or when it dies. Whenever it cannot serve a start — missing,
still importing, stale, broken, or the command does not qualify — `fork` says why and the
supervisor starts JupyterLab cold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING

import psutil

from jlservice import log, state
from jlservice.start import launcher
from jlservice.start.warm.recipe import Recipe, for_launch
from jlservice.supervisor import children

if TYPE_CHECKING:
    from jlservice.supervisor.watch import DebouncedWatch

logger = log.get("jlservice.warm")

HELLO_TIMEOUT_S = 120.0  # imports on a loaded machine; a cold start is never waiting on it
FORK_TIMEOUT_S = 5.0
STALE_DEBOUNCE_S = 1.0  # pip writes many files: look once they settle
MAX_MESSAGE = 1 << 16
MAX_PATHS = 256
BOOTSTRAP = "import sys;exec(compile(sys.stdin.read(),'jlservice-warm-parent','exec'))"
_PROGRAM = resources.files("jlservice.start.warm").joinpath("parent.py")


def _paths(message: dict) -> list[str]:
    """The warm parent's paths to watch; it runs as the lab user, so they are checked."""
    paths = message.get("paths")
    if (
        not isinstance(paths, list)
        or len(paths) > MAX_PATHS
        or not all(isinstance(p, str) and p.startswith("/") for p in paths)
    ):
        raise ValueError(f"expected at most {MAX_PATHS} absolute paths")
    return [p for p in paths if not p.startswith(("/proc/", "/sys/", "/dev/"))]


def fingerprint(paths: list[str]) -> tuple[object, ...]:
    """Each path's identity and mtime, and those of a directory's entries: an install, an
    upgrade or an edited config file changes it."""
    marks: list[object] = []
    for path in paths:
        marks.append((path, _mark(path)))
        with contextlib.suppress(OSError), os.scandir(path) as entries:
            marks.extend((e.path, _mark(e.path)) for e in entries)
    return tuple(marks)


def _mark(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


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


class WarmParent:
    """One warm parent process and the socket it takes requests on."""

    def __init__(self, recipe: Recipe, pid: int, sock: socket.socket) -> None:
        self.recipe = recipe
        self.pid = pid
        self.sock = sock
        self.spawned = time.monotonic()
        self.ready = False
        self.paths: list[str] = []
        self.fingerprint: tuple[object, ...] = ()
        self._reply: asyncio.Future[bytes] | None = None

    @classmethod
    def spawn(cls, recipe: Recipe) -> WarmParent:
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
                **launcher.identity(recipe.account, recipe.switch_user),
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
        """The next message from the warm parent (b"" once it has gone)."""
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
        self.parent: WarmParent | None = None
        self.enabled = False
        self._changed = changed
        self._launch: launcher.Launch | None = None
        self._unavailable: str | None = None  # why the command cannot start warm
        # Why the warm parent failed, and for which launch: not tried again until it changes.
        self._failed: tuple[launcher.Launch, str] | None = None
        self._ending: set[int] = set()  # ended parents not reaped yet
        self._watch_paths: DebouncedWatch | None = None

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
            if not parent.ready or fingerprint(parent.paths) == parent.fingerprint:
                return
            self._retire("packages or Jupyter configuration changed")
        elif parent is not None:
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
            reply = json.loads(await asyncio.wait_for(parent.receive(), FORK_TIMEOUT_S))
            if not isinstance(reply, dict):
                raise ValueError(f"unexpected reply {reply!r}")
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            problem = str(exc) or f"no answer within {FORK_TIMEOUT_S:g} s"
            logger.warning("warm_parent_broken", pid=parent.pid, problem=problem)
            if parent is self.parent:  # not retired meanwhile; replaced once JupyterLab is ready
                self._retire("broken")
            logger.info("lab_start_cold", reason=f"warm parent did not answer: {problem}")
            return None
        if "error" in reply:  # e.g. the notebook dir is not accessible: a cold start says so
            logger.info("lab_start_cold", reason=f"warm start failed: {reply['error']}")
            return None
        pid = reply.get("pid")
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
        return state.WarmParent(self.parent.pid, self.parent.ready)

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

    def _unusable(self, parent: WarmParent | None, recipe: Recipe | str) -> str | None:
        if isinstance(recipe, str):
            return recipe
        if parent is None:
            return self._failed[1] if self._failed else "no warm parent yet"
        if not parent.ready:
            return "the warm parent is still importing JupyterLab"
        if parent.recipe != recipe:
            return "the configuration changed since the warm parent started"
        if fingerprint(parent.paths) != parent.fingerprint:
            return "packages or Jupyter configuration changed since the warm parent started"
        return None

    def _spawn(self, recipe: Recipe) -> None:
        try:
            parent = WarmParent.spawn(recipe)
        except OSError as exc:
            self._fail(f"cannot start {recipe.interpreter}: {exc.strerror}")
            return
        self.parent = parent
        self.reaper.watch(parent.pid).add_done_callback(lambda f: self._exited(parent, f.result()))
        asyncio.get_running_loop().create_task(self._hello(parent))
        self._changed()
        logger.debug("warm_parent_starting", pid=parent.pid, preload=list(recipe.preload))

    async def _hello(self, parent: WarmParent) -> None:
        """Its paths (before it imports: a change meanwhile must count), then "ready"."""
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        problem = None
        try:
            paths = _paths(await self._message(parent, deadline))
            parent.paths, parent.fingerprint = paths, fingerprint(paths)
            ready = await self._message(parent, deadline)
            if ready.get("pid") != parent.pid:
                raise ValueError(f"unexpected message {ready!r}")
        except (OSError, ValueError, asyncio.TimeoutError) as exc:
            problem = str(exc) or f"not ready within {HELLO_TIMEOUT_S:g} s"
        if parent is not self.parent:
            return  # retired meanwhile
        if problem is not None:
            self._fail(problem)
            self._retire(problem)
            return
        parent.ready = True
        self._watch(parent.paths)
        self._changed()
        logger.info(
            "warm_parent_ready",
            pid=parent.pid,
            import_s=round(time.monotonic() - parent.spawned, 3),
            rss_mib=round((state.rss_bytes(parent.pid) or 0) / 2**20, 1),
        )

    @staticmethod
    async def _message(parent: WarmParent, deadline: float) -> dict:
        raw = await asyncio.wait_for(parent.receive(), max(deadline - time.monotonic(), 0))
        if not raw:
            raise ConnectionAbortedError("exited while importing")
        message = json.loads(raw)
        if not isinstance(message, dict):
            raise ValueError(f"unexpected message {message!r}")
        if "error" in message:
            raise ValueError(str(message["error"]))
        return message

    def _fail(self, problem: str, launch: launcher.Launch | None = None) -> None:
        launch = launch or self._launch
        assert launch is not None
        self._failed = (launch, problem)
        logger.warning(
            "warm_parent_failed",
            problem=problem,
            effect="JupyterLab starts cold until [lab] changes or jlservice restarts",
        )

    def _exited(self, parent: WarmParent, status: children.ExitStatus) -> None:
        self._ending.discard(parent.pid)
        if parent is not self.parent:
            return
        self.parent = None
        parent.close()  # reaped: its pid may already belong to another process
        self._unwatch()
        self._changed()
        if not parent.ready:
            if self._failed is None:
                self._fail(f"warm parent {status.describe()} while importing")
            return
        logger.warning("warm_parent_exited", pid=parent.pid, status=status.describe())
        if self._launch is not None:
            self.keep(self._launch, self.enabled)  # a new one, in the background

    def _retire(self, reason: str) -> None:
        parent, self.parent = self.parent, None
        self._unwatch()
        if parent is not None:
            logger.info("warm_parent_retired", pid=parent.pid, reason=reason)
            self._ending.add(parent.pid)
            parent.end()
            self._changed()

    # Watching the paths: a change replaces the warm parent before the next start needs it.

    def _watch(self, paths: list[str]) -> None:
        from jlservice.supervisor.watch import DebouncedWatch

        self._unwatch()
        # Missing directories (no ~/.jupyter yet) are not watched; the fingerprint checked
        # before each warm start still covers them.
        directories = {p if os.path.isdir(p) else os.path.dirname(p) for p in paths}
        watch = DebouncedWatch(
            sorted(d for d in directories if os.path.isdir(d)),
            asyncio.get_running_loop(),
            lambda _first_event: self._stale_check(),
            debounce=STALE_DEBOUNCE_S,
            max_delay=math.inf,
        )
        try:
            watch.start()
        except OSError as exc:  # a directory went away meanwhile
            logger.warning("warm_parent_watch_failed", problem=str(exc))
            return
        self._watch_paths = watch

    def _unwatch(self) -> None:
        if self._watch_paths is not None:
            self._watch_paths.stop()
            self._watch_paths = None

    def _stale_check(self) -> None:
        parent = self.parent
        if parent is None or not parent.ready or self._launch is None:
            return
        if fingerprint(parent.paths) != parent.fingerprint:
            self.keep(self._launch, self.enabled)
