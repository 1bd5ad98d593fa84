"""What can happen to the supervisor. Everything that happens arrives as one of these."""

from __future__ import annotations

from dataclasses import dataclass

from jlservice.supervisor.children import ExitStatus


@dataclass(frozen=True)
class ChildExited:
    pid: int
    status: ExitStatus


@dataclass(frozen=True)
class LabReady:
    pid: int


@dataclass(frozen=True)
class LabUnhealthy:
    pid: int
    problem: str


@dataclass(frozen=True)
class StartTimedOut:
    pid: int


@dataclass(frozen=True)
class BackoffElapsed:
    attempt: int


@dataclass(frozen=True)
class StopRequested:
    signal: str


@dataclass(frozen=True)
class RotateRequested:
    pass


@dataclass(frozen=True)
class ReloadRequested:
    source: str  # "SIGHUP" or "file"


@dataclass(frozen=True)
class PendingReloadDue:
    """The kernels went idle (or max_wait passed): apply the reload that waited for it."""

    generation: int


Event = (
    ChildExited
    | LabReady
    | LabUnhealthy
    | StartTimedOut
    | BackoffElapsed
    | StopRequested
    | RotateRequested
    | ReloadRequested
    | PendingReloadDue
)
