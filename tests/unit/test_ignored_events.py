"""An event that no longer applies is logged and dropped, never fatal to the supervisor."""

from __future__ import annotations

import asyncio

from jlservice.events import BackoffElapsed, PendingReloadDue
from jlservice.supervisor import Supervisor


def test_stale_events_are_ignored() -> None:
    # Only what _handle reads: no JupyterLab, past its first start, no reload waiting.
    supervisor = object.__new__(Supervisor)
    supervisor.lab = supervisor.pending = None
    supervisor.attempt, supervisor.stopping = 2, False
    for stale in (BackoffElapsed(attempt=1), PendingReloadDue(generation=1)):
        asyncio.run(supervisor._handle(stale))  # the timer or wait of an earlier attempt
