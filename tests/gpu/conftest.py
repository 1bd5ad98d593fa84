"""The fake libnvidia-ml.so.1, built by gcc for each test into its own directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from nvml.fakenvml import FakeNvml


@pytest.fixture
def fake_nvml(tmp_path: Path) -> FakeNvml:
    directory = tmp_path / "nvml"
    directory.mkdir()
    directory.chmod(0o755)
    return FakeNvml(directory)
