"""Time bounds that hold for a whole exchange, not for each step of it.

A timeout on each read lets whoever is on the other end — the lab user's JupyterLab, any
local account at the exporter's port — send a byte at a time, each well within it, for as
long as they like. And a bound on an await must not swallow the cancel of the task that
waits: asyncio.wait_for on Python 3.10 and 3.11 loses a cancel that comes in the step in
which the awaited thing finishes, and a task told to stop then runs on for good. (3.10 has
no asyncio.timeout: there `within` is wait_for, and the race remains.)
"""

from __future__ import annotations

import asyncio
import io
import socket
import sys
import time
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Reads(io.RawIOBase):
    """A socket's reads, each given only what is left of `seconds` from now (then
    TimeoutError). Wrap in io.BufferedReader for readline()."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, seconds: float) -> None:
        self._raw, self._sock = raw, sock
        self._deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer) -> int | None:  # type: ignore[no-untyped-def]
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the exchange took longer than its timeout")
        self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()  # the socket closes once its other users let go of it too
        super().close()


async def within(seconds: float, awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result, or asyncio.TimeoutError after `seconds` (monotonic). An answer
    that comes in the very step the time runs out is given up on too. Not for clean-up in a
    task being cancelled: on 3.11 the time running out then raises CancelledError."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)  # 3.10 has no better
