"""Watch the configuration file and report real changes to the supervisor loop.

Editors save by writing a new file and renaming it over the old one (vim, sed -i, Ansible) or
by truncating and writing in place, so the file's *directory* is watched. Any event there arms
a short trailing timer (the debounce); when it fires, the file's bytes are compared with the
last ones seen, and only a real change (or a disappearance) is reported — once per burst.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from jlservice import log
from jlservice.config.reader import digest

logger = log.get("jlservice.watch")

DEBOUNCE_S = 0.2
MAX_DELAY_S = 1.0  # a file that never stops changing is still reloaded this often


def fingerprint(path: Path) -> str | None:
    try:
        return digest(path.read_bytes())
    except OSError:
        return None


class ConfigWatcher(FileSystemEventHandler):
    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[float], None],
        seen: str | None,
    ) -> None:
        """`seen`: the fingerprint of the content the running configuration was read from."""
        self.path = path
        self._loop = loop
        self._on_change = on_change
        self._seen = seen
        self._timer: asyncio.TimerHandle | None = None
        self._first_event: float | None = None
        self._observer = Observer()

    def start(self) -> None:
        self._observer.schedule(self, str(self.path.parent), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        logger.debug("config_watch_started", directory=str(self.path.parent))

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)
        if self._timer is not None:
            self._timer.cancel()

    def accept(self, seen: str | None) -> None:
        """The supervisor has read this content (e.g. on SIGHUP): no need to report it again."""
        self._seen = seen

    # Runs on watchdog's thread: hand over to the loop and do nothing else.
    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if self._concerns_config(event):
            self._loop.call_soon_threadsafe(self._arm)

    def _concerns_config(self, event: FileSystemEvent) -> bool:
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

    def _arm(self) -> None:
        now = time.monotonic()
        if self._first_event is None:
            self._first_event = now
        if self._timer is not None:
            self._timer.cancel()
        delay = min(DEBOUNCE_S, max(self._first_event + MAX_DELAY_S - now, 0))
        self._timer = self._loop.call_later(delay, self._settle)

    def _settle(self) -> None:
        first, self._first_event, self._timer = self._first_event, None, None
        current = fingerprint(self.path)
        if current == self._seen:
            return
        self._seen = current
        self._on_change(first or time.monotonic())
