"""What can happen to the supervisor. Everything that happens arrives as one of these."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jlservice.supervisor.children import ExitStatus

if TYPE_CHECKING:
    import asyncio

    from jlservice.metrics.sampler import Snapshot


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


@dataclass(frozen=True)
class WarmParentChanged:
    """The warm parent appeared, became ready or went away."""


@dataclass(frozen=True)
class KernelsListed:
    """The JupyterLab started after exit `generation` adopted these of the waiting kernels
    (it holds their pidfds), with their notebooks where its API said them (id → path)."""

    generation: int
    adopted: frozenset[str]
    notebooks: dict[str, str]


@dataclass(frozen=True)
class KernelGraceElapsed:
    """Kernels kept at exit `generation` may have waited [kernels] grace for an adoption."""

    generation: int


@dataclass(frozen=True)
class KernelsChanged:
    """Kernels were kept, adopted or lost: what is published about them changed."""


class NotebookEvent:
    """What happened to notebooks' resources: the loop hands it to the Publisher as it is."""


@dataclass(frozen=True)
class NotebooksSampled(NotebookEvent):
    """The metrics sampler's round: what each notebook uses now (its Snapshot)."""

    snapshot: Snapshot


@dataclass(frozen=True)
class OomKilled(NotebookEvent):
    """The OOM killer ended a process of this service (a kernel's, when `kernel_id`)."""

    pid: int | None  # None: known from the kernel's cgroup alone (no kernel log to read)
    process: str  # its name, as the kernel log says it (the lab user's choice)
    kernel_id: str | None
    notebook: str
    memory_bytes: int  # what the killed process had resident (else its cgroup's peak)
    notebook_memory_bytes: int | None  # what its kernel's tree had, at the last round
    limit_bytes: int | None  # of the cgroup whose limit was hit; None: the machine's memory
    cgroup: str  # the memory cgroup that ran out ("" when the whole machine did)
    own_limit: bool | None = False  # the limit hit is the kernel's own; None: which is unknown

    def fields(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items() if v not in (None, "")}


@dataclass(frozen=True)
class KernelCulled(NotebookEvent):
    """An idle kernel holding GPU memory was shut down ([kernels] cull_idle_gpu)."""

    kernel_id: str
    notebook: str
    gpu_memory_bytes: int  # what it held, freed
    at: float


@dataclass(frozen=True)
class CertificateCheckDue:
    """Time to look at the TLS certificate's expiry again (daily)."""


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
    | WarmParentChanged
    | KernelsListed
    | KernelGraceElapsed
    | KernelsChanged
    | NotebooksSampled
    | OomKilled
    | KernelCulled
    | CertificateCheckDue
)

# The signals that are commands to the supervisor.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def signal_event(signum: int) -> Event:
    """Signals are commands: stop, reload, rotate the token."""
    if signum == signal.SIGHUP:
        return ReloadRequested("SIGHUP")
    if signum == signal.SIGUSR1:
        return RotateRequested()
    return StopRequested(signal.Signals(signum).name)


def post_signals(
    loop: asyncio.AbstractEventLoop, post: Callable[[Event], None], early: Iterable[int]
) -> None:
    """From now on each of SIGNALS is posted as its event; `early`, the signals that came
    while jlservice was still importing, are posted first."""
    for signum in SIGNALS:
        loop.add_signal_handler(signum, post, signal_event(signum))
    for signum in early:
        post(signal_event(signum))
