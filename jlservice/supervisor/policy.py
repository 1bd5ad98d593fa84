"""The restart policy in numbers: how long to wait before the next start, and when a run of
crashes is a storm. etc/jlservice.toml's [restart] says why each default is what it is."""

from __future__ import annotations

import collections

from jlservice.config import RestartConfig
from jlservice.errors import WaitingFor

MIN_WAIT_S = 0.1  # even with [restart] delays of 0: looking again is not free


def backoff_delay(failures: int, restart: RestartConfig) -> float:
    """Seconds to wait before start number `failures` + 1.

    The first failure after a healthy run restarts at once (a single crash should cost no
    more than a cold start); further failures in a row wait initial_delay, doubling each
    time up to max_delay.
    """
    if failures <= 1:
        return 0.0
    return min(restart.initial_delay * 2 ** (failures - 2), restart.max_delay)


class Waiting:
    """Starts in a row that found something outside jlservice in the way (errors.WaitingFor:
    another program on the port, a notebook dir that does not answer), and what it was."""

    def __init__(self) -> None:
        self.waits = 0
        self.cause: WaitingFor | None = None  # as last logged

    def again(self, cause: WaitingFor, restart: RestartConfig) -> tuple[float, bool]:
        """Seconds before trying again: initial_delay doubling, at most max_delay, so that
        JupyterLab serves within max_delay of the cause clearing; and whether `cause` is
        news (to be logged)."""
        self.waits += 1
        news = _key(cause) != _key(self.cause)
        self.cause = cause
        # The exponent capped: a port held for hours (a thousand waits) must not overflow.
        delay = min(restart.initial_delay * 2 ** min(self.waits - 1, 64), restart.max_delay)
        return max(delay, MIN_WAIT_S), news

    def end(self) -> WaitingFor | None:
        """The start went ahead this time: what had been waited for, if anything."""
        cause, self.waits, self.cause = self.cause, 0, None
        return cause


def _key(cause: WaitingFor | None) -> tuple[type, str] | None:
    return None if cause is None else (type(cause), str(cause))


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
