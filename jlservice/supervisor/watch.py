"""Watch the configuration file and report real changes to the supervisor loop.

Editors save by writing a new file and renaming it over the old one (vim, sed -i, Ansible) or
by truncating and writing in place, so the file's *directory* is watched. Any event there arms
a short trailing timer (the debounce); when it fires, the file's bytes are compared with the
last ones seen, and only a real change (or a disappearance) is reported — once per burst.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from jlservice import log
from jlservice.config import Config
from jlservice.config.reader import digest, read_head
from jlservice.supervisor.events import Event, ReloadRequested

logger = log.get("jlservice.watch")

DEBOUNCE_S = 0.2
MAX_DELAY_S = 1.0  # a file that never stops changing is still reloaded this often


class _StopNoise(logging.Filter):
    """watchdog's inotify emitter logs an error for an event that comes in as it stops (a
    write in the watched directory then): nothing is wrong, and jlservice is stopping."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_StopNoise())


def read_digest(path: Path) -> str | None:
    try:
        return digest(read_head(path))  # a huge file is rejected when read: no need for all
    except OSError:
        return None


class DebouncedWatch(FileSystemEventHandler):
    """Watch directories (not their subdirectories) and call `settled(first_event)` on the
    loop once their events stop for `debounce` seconds — at most `max_delay` seconds after
    the first. `concerns(event)` picks the events that count."""

    def __init__(
        self,
        directories: list[str],
        loop: asyncio.AbstractEventLoop,
        settled: Callable[[float], None],
        concerns: Callable[[FileSystemEvent], bool] = lambda event: True,
        debounce: float = DEBOUNCE_S,
        max_delay: float = MAX_DELAY_S,
    ) -> None:
        self.directories = directories
        self._loop = loop
        self._settled = settled
        self._concerns = concerns
        self._debounce = debounce
        self._max_delay = max_delay
        self._timer: asyncio.TimerHandle | None = None
        self._first_event: float | None = None
        self._observer = Observer()

    def start(self) -> None:
        """Raises OSError (and watches nothing) if a directory cannot be watched."""
        for directory in self.directories:
            self._observer.schedule(self, directory, recursive=False)
        self._observer.daemon = True
        try:
            self._observer.start()
        except OSError:
            self._observer.stop()
            raise

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)
        if self._timer is not None:
            self._timer.cancel()

    # Runs on watchdog's thread: hand over to the loop and do nothing else.
    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if self._concerns(event):
            self._loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        now = time.monotonic()
        if self._first_event is None:
            self._first_event = now
        if self._timer is not None:
            self._timer.cancel()
        delay = min(self._debounce, max(self._first_event + self._max_delay - now, 0))
        self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        first, self._first_event, self._timer = self._first_event, None, None
        self._settled(first or time.monotonic())


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[float], None],
        seen: str | None,
    ) -> None:
        """`seen`: the digest of the content the running configuration was read from."""
        self.path = path
        self._on_change = on_change
        self._seen = seen
        self._watch = DebouncedWatch([str(path.parent)], loop, self._settle, self._concerns)

    def start(self) -> None:
        self._watch.start()
        logger.debug("config_watch_started", directory=str(self.path.parent))

    def stop(self) -> None:
        self._watch.stop()

    def accept(self, seen: str | None) -> None:
        """The supervisor has read this content (e.g. on SIGHUP): no need to report it again."""
        self._seen = seen

    def _concerns(self, event: FileSystemEvent) -> bool:
        # A symlinked config (e.g. a Kubernetes ConfigMap) changes when its *target* is
        # swapped, which names other files: then every event in the directory counts.
        if self.path.is_symlink():
            return True
        name = self.path.name
        return any(
            os.path.basename(os.fsdecode(p)) == name
            for p in (event.src_path, getattr(event, "dest_path", ""))
            if p
        )

    def _settle(self, first_event: float) -> None:
        current = read_digest(self.path)
        if current == self._seen:
            return
        self._seen = current
        self._on_change(first_event)


class ConfigFollower:
    """Watches the configuration file while `[reload] watch` asks for it, and posts
    ReloadRequested("file") when its content really changes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, post: Callable[[Event], None]) -> None:
        self._loop = loop
        self._post = post
        self._watcher: ConfigWatcher | None = None

    def follow(self, config: Config) -> None:
        """Watch, or stop watching, as `config` says."""
        wanted = config.path is not None and config.reload.watch
        if wanted and self._watcher is None:
            self._watcher = ConfigWatcher(config.path, self._loop, self._changed, config.digest)
            self._watcher.start()
        elif not wanted and self._watcher is not None:
            self.stop()

    def accept(self, seen: str | None) -> None:
        """The supervisor has read this content (e.g. on SIGHUP): no need to report it."""
        if self._watcher is not None:
            self._watcher.accept(seen)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _changed(self, first_event: float) -> None:
        logger.info("config_change_detected", after_s=round(time.monotonic() - first_event, 3))
        self._post(ReloadRequested("file"))
