"""What several commands share: the one-line error, a masked token, editing the config file."""

from __future__ import annotations

from pathlib import Path


def mask(token: str) -> str:
    return token[:4] + "…" if token else ""


def point_config_at(
    path: Path | None, section: str, values: dict[str, str], current: dict[str, str]
) -> None:
    """Make the configuration file say `values` in [section]: edit it, or, when there is
    no file or it cannot be written, print the lines to add. `current`: what it says now."""
    from jlservice.config import edit

    if current == values:
        return
    if path is not None:
        try:
            edit.set_keys(path, section, values)
            keys = ", ".join(f"{k} = {v}" for k, v in values.items())
            print(f"{path}: [{section}] {keys}")
            return
        except OSError as exc:
            why = f"cannot write {path} ({exc.strerror})"
    else:
        why = "no configuration file"
    print(f"{why}; add these lines to your configuration file:")
    print(edit.lines_to_add(section, values), end="")
