from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.service import IS_ROOT
from sandbox import Sandbox, available


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A freshly booted systemd (PID 1 of its own namespaces); gone after the test."""
    with _booted(tmp_path) as box:
        yield box


@pytest.fixture(scope="session")
def early_sandbox(early_dir) -> Iterator[Sandbox]:
    """The same for a test marked `early`, which a later test looks at: it boots at the start
    of the run, and the test pulls it down (close()) as soon as it is done with it."""
    with _booted(early_dir("early-sandbox")) as box:
        yield box


@contextlib.contextmanager
def _booted(root: Path) -> Iterator[Sandbox]:
    if not IS_ROOT:
        pytest.skip("needs root: systemd as PID 1 in private namespaces (unshare, mounts)")
    if why := available():
        pytest.skip(why)
    box = Sandbox(root / "sandbox")
    try:
        box.boot()
        yield box
    finally:
        box.close()
