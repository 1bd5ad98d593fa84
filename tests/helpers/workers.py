"""tests/run.sh runs the suite on two pytest-xdist workers, each a pytest session of its own.

A module is the unit of work: it runs on one worker, in its order, so what its tests share
stays one (a module-scoped fixture is made once; an `early` test's service, which a later
test of its module looks at, is that test's). Every systemd sandbox runs on one worker too:
there is no cgroup namespace, so two at once would manage the same host cgroups.

A test marked `alone` bounds a time the machine's load would stretch (watchdog pings a
second apart, a stop within 10 s): while it runs, the other worker waits between tests.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_Scheduler(), "jlservice-test-scheduler")


@pytest.fixture(autouse=True)
def _machine(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[None]:
    """A shared lock on the machine for each test, the lock alone for one marked `alone`
    (flock: the other worker sleeps until its test is done)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    with open(tmp_path_factory.getbasetemp().parent / "machine.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        yield


class _Scheduler:
    @pytest.hookimpl
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):  # type: ignore[no-untyped-def]
        from xdist.scheduler import LoadScopeScheduling

        class ByModule(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                module = nodeid.split("::", 1)[0]
                return "tests/systemd" if module.startswith("tests/systemd/") else module

        return ByModule(config, log)
