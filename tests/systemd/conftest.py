from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.service import IS_ROOT
from sandbox import Sandbox, available


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A freshly booted systemd (PID 1 of its own namespaces); gone after the test."""
    if not IS_ROOT:
        pytest.skip("needs root: systemd as PID 1 in private namespaces (unshare, mounts)")
    if why := available():
        pytest.skip(why)
    box = Sandbox(tmp_path / "sandbox")
    try:
        box.boot()
        yield box
    finally:
        box.close()
