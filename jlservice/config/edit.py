"""Set keys in a configuration file by editing its text: comments and layout stay as the
administrator wrote them (used by `jlservice password` and `jlservice cert`)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from jlservice import files
from jlservice.config.reader import ConfigError, parse_toml


def lines_to_add(section: str, values: dict[str, str]) -> str:
    return f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def set_keys(path: Path, section: str, values: dict[str, str]) -> None:
    """Make `[section] key = "value"` true in `path` for each of `values`, atomically,
    keeping the file's mode and owner. OSError if the file cannot be written."""
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    header = re.compile(rf"^\s*\[\s*{re.escape(section)}\s*\]\s*(#.*)?$")
    start = next((i for i, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        text = text + ("" if not text or text.endswith("\n") else "\n")
        text += ("\n" if text else "") + lines_to_add(section, values)
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
            len(lines),
        )
        for key, value in values.items():
            line = f"{key} = {json.dumps(value)}\n"
            pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
            found = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
            if found is not None:
                lines[found] = line
            else:
                lines.insert(start + 1, line)
                end += 1
        text = "".join(lines)
    doc = parse_toml(text.encode(), str(path))
    if any(doc.get(section, {}).get(k) != v for k, v in values.items()):
        raise ConfigError(f"{path}: [{section}]: could not be edited safely; add by hand")
    info = path.stat()
    files.write_atomic(path, text.encode(), mode=info.st_mode & 0o7777, owner=_owner(info))


def _owner(info: os.stat_result) -> tuple[int, int] | None:
    return (info.st_uid, info.st_gid) if os.geteuid() == 0 else None
