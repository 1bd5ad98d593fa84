"""`jlservice doctor`: check an installation end to end, one line per check.

Each check is one function of a Context (what could be read: the configuration, the state
file) returning a Result; a check that does not apply says why and counts as passing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jlservice.admin.doctor.context import Context, Result
from jlservice.admin.doctor.environments import check_conda, check_environments
from jlservice.admin.doctor.http import check_answers, check_auth, check_metrics, check_token
from jlservice.admin.doctor.local import (
    check_address,
    check_config,
    check_notebook_dir,
    check_port,
    check_supervisor,
    check_tls,
)
from jlservice.admin.doctor.resources import check_limits
from jlservice.text import escape_controls

CHECKS: tuple[Callable[[Context], Result], ...] = (
    check_config,
    check_notebook_dir,
    check_supervisor,
    check_port,
    check_address,
    check_answers,
    check_token,
    check_auth,
    check_tls,
    check_metrics,
    check_environments,
    check_conda,
    check_limits,
)


def diagnose(path: Path | None) -> list[Result]:
    ctx = Context.read(path)
    return [check(ctx) for check in CHECKS]


def report(results: list[Result]) -> str:
    """One line per check; names of processes and paths are shown escaped."""
    return "\n".join(escape_controls(r.line()) for r in results)


__all__ = ["CHECKS", "Context", "Result", "diagnose", "report"]
