"""The supervisor's side of warm restarts: keep one warm parent ready, ask it to fork.

A warm parent is made in the background (after JupyterLab is ready, so that its imports
never compete with a start) and replaced when what it baked in changes: the recipe (command,
interpreter, user, environment) or the files under its watched paths (installed packages,
Jupyter config and extensions: it watches them itself, as the lab user, and exits once they
change), or when it dies. A start waits for one that is still importing, at most as long
as a cold start takes. Whenever it cannot serve a start — missing, too slow, stale, broken,
or the command does not qualify — `fork` says why and the supervisor starts JupyterLab cold.
The warm parent runs as the lab user: a message that is not what was asked for retires it —
never the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable

import psutil

from jlservice import log, procfs, state
from jlservice.deadline import within
from jlservice.start import launcher, listening
from jlservice.start.warm.process import EXIT_STALE, WarmProcess, parse
from jlservice.start.warm.recipe import Recipe, for_launch
from jlservice.supervisor import children

logger = log.get("jlservice.warm")

HELLO_TIMEOUT_S = 120.0  # imports on a loaded machine (a start waits less: see _settle)
FORK_TIMEOUT_S = 5.0
_STALE = "packages or Jupyter configuration changed"


def _forked_by(pid: object, launch: launcher.Launch, reaper: children.Reaper) -> bool:
    """Whether `pid` is a server just forked for us: our child (the warm parent replies once
    the fork's intermediate is reaped), running as the lab user — or already exited as our
    child. The warm parent runs as that user, so what it says is checked before root
    signals or waits for the pid: not one already watched (the warm parent's own pid, say:
    its exit would then go unnoticed, and its pid, once reused, be signalled and spared)."""
    if not isinstance(pid, int) or pid <= 1 or reaper.watching(pid):
        return False
    if reaper.reaped(pid):
        return True
    try:
        server = psutil.Process(pid)
        uid = launch.account.uid
        return server.ppid() == os.getpid() and set(server.uids()) == {uid}
    except psutil.Error:
        return reaper.reaped(pid)  # exited meanwhile


class WarmKeeper:
    def __init__(self, reaper: children.Reaper, changed: Callable[[], None]) -> None:
        """`changed`: called whenever describe() may say something new."""
        self.reaper = reaper
        self.parent: WarmProcess | None = None
        self.enabled = False
        self._on_change = changed
        self._news = asyncio.Event()  # set at every change of the warm parent
        self._cold_start_s: float | None = None  # the last cold start's spawn → ready
        self._hurried = False  # a command waits for the start in progress
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

    async def fork(
        self, launch: launcher.Launch, output: int, listen: tuple[int, ...] = ()
    ) -> int | None:
        """Start `launch` from the warm parent with `output` as its stdout and stderr,
        serving the listening descriptors `listen` (start.listening).

        Returns the server's pid, or None (with the reason logged) to start cold.
        """
        if not self.enabled:
            return None
        recipe = for_launch(launch)
        why = self._mismatch(recipe)
        if why is None and self.parent is not None:
            why = await self._settle(self.parent)
        parent = self.parent
        why = why or self._unusable(parent)
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
            "listen_env": listening.ENV,  # named, with its numbers there, for the server
        }
        self.reaper.expect_adoption()  # an exit reaped from now on may be the new server's
        try:
            socket.send_fds(parent.sock, [json.dumps(request).encode()], [output, *listen])
            raw = await within(FORK_TIMEOUT_S, parent.receive())
            if not raw:
                raise ConnectionAbortedError("it exited")
            kind, value = parse(raw, ("pid", "error", "stale"))
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

    def cold_start_took(self, seconds: float) -> None:
        """A cold start's spawn → ready here: how long a start may wait for a warm parent
        that is still importing before starting cold instead."""
        self._cold_start_s = seconds

    def hurry(self) -> None:
        """A command (stop, reload, rotate) waits for the start in progress: no waiting for
        a warm parent then."""
        self._hurried = True
        self._news.set()

    def spare(self) -> set[int]:
        """Processes a sweep for leftovers must leave alone."""
        return {self.parent.pid, *self._ending} if self.parent else set(self._ending)

    def describe(self) -> state.WarmParent | None:
        """Which warm parent, and whether it can serve a start (state.json, metrics)."""
        if self.parent is None:
            return None
        return state.WarmParent(self.parent.pid, self.parent.usable)

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

    def _changed(self) -> None:
        self._news.set()
        self._on_change()

    async def _settle(self, parent: WarmProcess) -> str | None:
        """Until `parent` can serve, or is gone; why not, if it was given up.

        One still importing has a head start on a cold start of the same imports, and the
        two would fight for the CPU: wait for it, at most as long as a cold start takes
        (beyond that, a cold start begun now would have served already), then retire it.
        A check of its paths is answered within FORK_TIMEOUT_S, or it is retired. A
        command that comes meanwhile (hurry) ends the wait: the lab user can slow both the
        warm parent and the cold start that sets the limit.
        """
        self._hurried = False
        if parent.ready:
            limit = FORK_TIMEOUT_S
        elif self._cold_start_s is None:
            return None
        else:
            limit = self._cold_start_s
            logger.info("lab_start_waits_for_warm_parent", pid=parent.pid, max_wait_s=limit)
        deadline = time.monotonic() + limit
        while parent is self.parent and not parent.usable:
            self._news.clear()
            if self._hurried:
                return "a command is waiting"
            if (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await within(left, self._news.wait())
            elif parent.ready:
                return None  # its check retires it
            else:
                why = f"the warm parent was still importing after {limit:.1f} s"
                self._retire(f"{why}, as long as a cold start takes")
                return why
        return None

    def _mismatch(self, recipe: Recipe | str) -> str | None:
        """Why the warm parent can never serve a launch of `recipe` (another user, say),
        retiring it now rather than once the cold start is ready (keep() makes the next)."""
        if isinstance(recipe, str):
            self._retire(recipe)
            return recipe
        if self.parent is not None and self.parent.recipe != recipe:
            self._retire("configuration changed")
            return "the configuration changed since the warm parent started"
        return None

    def _unusable(self, parent: WarmProcess | None) -> str | None:
        if parent is None:
            return self._failed[1] if self._failed else "no warm parent yet"
        if not parent.ready:
            return "the warm parent is still importing JupyterLab"
        if parent.checking:
            return "the warm parent is checking its packages and Jupyter configuration"
        return None

    def _spawn(self, recipe: Recipe) -> None:
        try:
            parent = WarmProcess.spawn(recipe)
        except OSError as exc:
            self._fail(f"cannot start {recipe.interpreter}: {exc.strerror}")
            return
        self.parent = parent
        parent.exited = self.reaper.watch(parent.pid)
        parent.exited.add_done_callback(lambda f: self._exited(parent, f.result()))
        asyncio.get_running_loop().create_task(self._hello(parent))
        self._changed()
        logger.debug("warm_parent_starting", pid=parent.pid, preload=list(recipe.preload))

    async def _hello(self, parent: WarmProcess) -> None:
        """Its "ready", or why not."""
        problem = None
        try:
            raw = await within(HELLO_TIMEOUT_S, parent.receive())
            if not raw:
                raise ConnectionAbortedError("exited while importing")
            kind, value = parse(raw, ("pid", "error"))
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
            raw = await within(FORK_TIMEOUT_S, parent.receive())
            if not raw:
                return  # it exited: its status says why
            parse(raw, ("fresh",))
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
