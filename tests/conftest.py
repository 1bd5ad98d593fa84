from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.accounts import throwaway_user
from helpers.service import IS_ROOT, NotifySocket, Service
from nvml.fakenvml import FakeNvml

from jlservice import users

# helpers.skips: an unexpected skip fails where every test must run; helpers.workers: what
# must run on one pytest-xdist worker.
pytest_plugins = ["helpers.skips", "helpers.workers"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    definition = metafunc.definition
    own = any("warm" in m.args[0] for m in definition.iter_markers("parametrize"))
    if (
        "warm" in metafunc.fixturenames
        and definition.get_closest_marker("warm_and_cold")
        and not own
    ):
        metafunc.parametrize("warm", [True, False], ids=["warm", "cold"], indirect=True)


@pytest.hookimpl(trylast=True)  # after pytest's own ordering by fixture
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `early` run first, in their order: each starts a service (or a unit in a
    systemd sandbox) that mostly waits (a backoff with the defaults), which a later test of
    its module looks at; the waiting passes while the other tests run."""
    items.sort(key=lambda item: item.get_closest_marker("early") is None)


@pytest.fixture
def warm(request) -> bool | None:
    """[restart] warm for a test's services: helpers.service.WARM_AND_COLD runs a suite both
    ways; elsewhere None (the default, warm on, without waiting for the warm parent)."""
    return getattr(request, "param", None)


@pytest.fixture
def service_factory(tmp_path: Path, warm: bool | None, lab_user: users.Account | None) -> Iterator:
    """Make Service objects, JupyterLab run as `lab_user`; every one of them is cleaned up
    after the test."""
    with _services(tmp_path, warm, lab_user) as make:
        yield make


@pytest.fixture(scope="session")
def early_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """A directory for what tests marked `early` start, which users they switch to can enter."""
    return lambda name: _enterable(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def early_service_factory(early_dir, lab_user: users.Account | None) -> Iterator:
    """The same, for the services of tests marked `early` (pytest_collection_modifyitems),
    which later tests look at: they live until the end of the run, or until a test ends them
    with cleanup()."""
    with _services(early_dir("early"), None, lab_user) as make:
        yield make


@contextlib.contextmanager
def _services(root: Path, warm: bool | None, lab_user: users.Account | None) -> Iterator:
    made: list[Service] = []

    def make(subdir: str = "svc", **sections) -> Service:
        directory = root / subdir
        directory.mkdir()
        directory.chmod(0o755)
        if warm is not None:
            sections["restart"] = {"warm": warm, **sections.get("restart", {})}
        svc = Service(directory, wait_warm=warm is True, lab_user=lab_user, **sections)
        made.append(svc)
        return svc

    try:
        yield make
    finally:
        for svc in made:
            svc.cleanup()


@pytest.fixture
def service(service_factory) -> Service:
    return service_factory()


@pytest.fixture(scope="session")
def lab_user() -> Iterator[users.Account | None]:
    """Whom the suite's services run JupyterLab as. As root: a throw-away unprivileged
    account, the deployment jlservice is for (a root supervisor, the lab user switched to).
    Otherwise None: JupyterLab runs as whoever runs the tests, as it would for them."""
    if not IS_ROOT:
        yield None
        return
    with _throwaway_user() as account:
        yield account


@pytest.fixture(scope="session")
def other_user() -> Iterator[users.Account]:
    """A throw-away unprivileged account (needs root)."""
    with _throwaway_user() as account:
        yield account


@pytest.fixture(scope="session")
def second_user() -> Iterator[users.Account]:
    """Another one, for two services side by side."""
    with _throwaway_user() as account:
        yield account


@contextlib.contextmanager
def _throwaway_user() -> Iterator[users.Account]:
    if not IS_ROOT:
        pytest.skip("needs root to create a user with useradd and switch to it")
    with throwaway_user() as account:
        yield account


@pytest.fixture
def tmp_path(tmp_path: Path) -> Path:
    return _enterable(tmp_path)


def _enterable(path: Path) -> Path:
    # pytest's base temp dir is 0700; services that switch users need to enter it.
    for parent in (path, *list(path.parents)[:3]):
        if parent.stat().st_uid == os.geteuid():
            parent.chmod(parent.stat().st_mode | 0o711)
    return path


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    """A fake systemd notification socket (unix datagram) the test reads from."""
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def fake_nvml(tmp_path: Path) -> FakeNvml:
    """The fake libnvidia-ml.so.1 (tests/nvml), built by gcc for this test in its own dir."""
    directory = tmp_path / "nvml"
    directory.mkdir()
    directory.chmod(0o755)
    return FakeNvml(directory)
