"""Readiness and liveness probes of a running JupyterLab, as tasks that post events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from jlservice import log
from jlservice.config import HealthConfig
from jlservice.deadline import within
from jlservice.supervisor import probe
from jlservice.supervisor.events import Event, LabReady, LabUnhealthy

logger = log.get("jlservice.health")


async def wait_ready(
    pid: int,
    url: str,
    output: asyncio.Event,
    post: Callable[[Event], None],
    stranger: Callable[[], str | None],
) -> None:
    """Probe as soon as JupyterLab prints something, and at least every 100 ms.

    An answer counts only if JupyterLab gave it (`stranger`: who else holds its port): a
    process that took the port first must not pass for it, and get the token from those
    who then believe it ready.
    """
    told = False
    while True:
        output.clear()  # before the probe: a line printed while it runs means "try again now"
        if await probe.api_problem(url, timeout=2.0) is None:
            if (who := stranger()) is None:
                break
            if not told:
                logger.warning("lab_port_taken", pid=pid, problem=who)
                told = True
        with contextlib.suppress(asyncio.TimeoutError):
            await within(1.0 if told else 0.1, output.wait())
    post(LabReady(pid))


async def watch(
    pid: int,
    url: str,
    health: Callable[[], HealthConfig],
    on_result: Callable[[bool], None],
    post: Callable[[Event], None],
) -> None:
    """Probe every interval; after `failures` failed probes in a row, report it unhealthy.

    `health` is read on every round, so a reload that changes [health] applies at once.
    """
    failures = 0
    while True:
        await asyncio.sleep(health().interval)
        settings = health()
        problem = await probe.api_problem(url, timeout=settings.timeout)
        on_result(problem is None)
        if problem is None:
            failures = 0
            continue
        failures += 1
        logger.warning(
            "lab_probe_failed", pid=pid, problem=problem, failures=failures, limit=settings.failures
        )
        if failures >= settings.failures:
            post(LabUnhealthy(pid, problem))
            return
