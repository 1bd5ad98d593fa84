"""The restart policy in numbers: how long to wait before the next start, and when a run of
crashes is a storm. etc/jlservice.toml's [restart] says why each default is what it is."""

from __future__ import annotations

import collections

from jlservice.config import RestartConfig

PORT_MIN_DELAY_S = 0.1  # even with [restart] delays of 0: looking at a port is not free


def backoff_delay(failures: int, restart: RestartConfig) -> float:
    """Seconds to wait before start number `failures` + 1.

    The first failure after a healthy run restarts at once (a single crash should cost no
    more than a cold start); further failures in a row wait initial_delay, doubling each
    time up to max_delay.
    """
    if failures <= 1:
        return 0.0
    return min(restart.initial_delay * 2 ** (failures - 2), restart.max_delay)


class PortWait:
    """Starts in a row that found the port taken by another program, and who held it."""

    def __init__(self) -> None:
        self.waits = 0
        self.holder: str | None = None  # as last logged

    def again(self, holder: str, restart: RestartConfig) -> tuple[float, bool]:
        """Seconds before looking again: initial_delay doubling, at most max_delay, so that
        JupyterLab serves within max_delay of the port being let go; and whether `holder`
        is news (to be logged)."""
        self.waits += 1
        news, self.holder = holder != self.holder, holder
        # The exponent capped: a port held for hours (a thousand waits) must not overflow.
        delay = min(restart.initial_delay * 2 ** min(self.waits - 1, 64), restart.max_delay)
        return max(delay, PORT_MIN_DELAY_S), news

    def end(self) -> bool:
        """The port was free this time: was it waited for?"""
        waited = self.holder is not None
        self.waits, self.holder = 0, None
        return waited


class CrashHistory:
    """When ready servers died, over the last reset_after seconds."""

    def __init__(self) -> None:
        self._times: collections.deque[float] = collections.deque()

    def __len__(self) -> int:
        return len(self._times)

    def storm(self, now: float, restart: RestartConfig) -> bool:
        """Count a death at `now` (monotonic): is this more than max_crashes of them within
        reset_after seconds, far more than people or the OOM killer cause?"""
        while self._times and now - self._times[0] > restart.reset_after:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) > restart.max_crashes
