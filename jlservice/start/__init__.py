"""How JupyterLab is started: the exact launch (launcher), and two ways to start it behind
one `start(launch, secrets)`: cold.ColdStart (a new process) and warm.WarmStart (forked from
a warm parent, cold when it cannot be).
"""

from __future__ import annotations

from typing import BinaryIO, NamedTuple

from jlservice.login import Secrets

__all__ = ["Secrets", "Started"]


class Started(NamedTuple):
    """A JupyterLab process just started: the supervisor owns its pid and output from now on."""

    pid: int
    output: BinaryIO  # the read end of its stdout+stderr pipe
    warm: bool  # forked by the warm parent
    began: float  # time.time() just before the spawn or the fork request: a date, for people
    began_monotonic: float  # time.monotonic() then: for durations, which a clock step leaves alone
