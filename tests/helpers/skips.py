"""Where every test must run (as root, as tests/run.sh and CI run the suite, or with CI set), a
skip is a failure unless its reason is in [tool.pytest.ini_options] allowed_skips, each entry
"REASON | why that skip may stay". As root, tests/run.sh installs all the suite needs: a test
that skips there proves nothing while CI stays green."""

from __future__ import annotations

import os

import pytest

STRICT_ENV = "JLSERVICE_STRICT_SKIPS"  # "1"/"0" forces strictness on or off (its own tests)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "allowed_skips",
        "skip reasons that do not fail a strict run, each 'REASON | why it may stay'",
        type="linelist",
    )


def strict() -> bool:
    forced = os.environ.get(STRICT_ENV)
    if forced is not None:
        return forced == "1"
    return os.geteuid() == 0 or bool(os.environ.get("CI"))


def allowed(config: pytest.Config) -> set[str]:
    return {line.split(" | ", 1)[0].strip() for line in config.getini("allowed_skips")}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not strict():
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if reason in allowed(item.config):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"unexpected skip: {reason!r}. Where every test must run (root or CI), install what "
        "it needs (tests/run.sh does, as root), or add the reason to [tool.pytest.ini_options] "
        "allowed_skips with why it may stay"
    )
