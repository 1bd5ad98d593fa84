"""What each notebook uses, as the supervisor last published it: notebooks.json in the
runtime dir, for `jlservice status --json` and `jlservice top`. Light: json and files only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jlservice import bounded, files

FILE = "notebooks.json"
MAX_BYTES = 16 * 1024 * 1024  # thousands of notebooks with long paths fit


def write(runtime_dir: Path, table: dict[str, Any]) -> None:
    """Root's alone (0600): notebook paths are the lab user's business. Raises OSError.
    Not fsynced: it is rewritten every round, and no use after a reboot."""
    data = json.dumps(table, sort_keys=True).encode()
    files.write_atomic(runtime_dir / FILE, data, durable=False)


def read(runtime_dir: Path) -> dict[str, Any] | None:
    """The last table, or None when there is none (no round yet, metrics off, not root)."""
    try:
        with open(runtime_dir / FILE, "rb") as f:
            table = bounded.loads(f.read(MAX_BYTES + 1), MAX_BYTES)
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) else None
