"""Fixtures shared by the unit tests: valid base configurations, directories, sockets."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def lab_base(tmp_path: Path) -> dict[str, object]:
    """The smallest valid [lab] table for whoever runs the tests (root needs allow_root)."""
    table: dict[str, object] = {"notebook_dir": str(tmp_path)}
    if IS_ROOT:
        table["allow_root"] = True
    return table


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str | bytes], Path]:
    """Write a jlservice.toml in tmp_path (text or raw bytes) and return its path."""

    def write(content: str | bytes, name: str = "jlservice.toml") -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp that any account can enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="jls-unit-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path, for unix sockets (sun_path holds 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="jls-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
