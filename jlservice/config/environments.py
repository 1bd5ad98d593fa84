"""[kernels] environments: where conda environments and venvs are looked for."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from jlservice.config.model import LabConfig
from jlservice.config.reader import Reader

_EXAMPLE = '["/opt/conda/envs/*", "~/venvs/*", "/opt/conda"]'
MAX_PATTERNS = 100


def parse_environments(r: Reader, t: Mapping[str, Any], home: str) -> tuple[str, ...]:
    """The paths and globs, `~` made the lab user's `home`; each an absolute path."""
    value = r.get(t, "kernels", "environments", list, [])
    if len(value) > MAX_PATTERNS:
        r.fail("kernels", "environments", f"{len(value)} entries; at most {MAX_PATTERNS}")
    patterns = []
    for item in value:
        if not isinstance(item, str) or not item:
            r.fail("kernels", "environments", f"expected a list of paths or globs, e.g. {_EXAMPLE}")
        patterns.append(_pattern(r, item, home))
    return tuple(dict.fromkeys(patterns))


def _pattern(r: Reader, text: str, home: str) -> str:
    if not text.isprintable():
        r.fail("kernels", "environments", f"{text!r} contains a control character")
    if text == "~" or text.startswith("~/"):
        text = home + text[1:]
    elif text.startswith("~"):
        r.fail(
            "kernels",
            "environments",
            f"{text!r}: only ~ (the lab user's home) is understood; give other homes in full",
        )
    if not text.startswith("/"):
        r.fail("kernels", "environments", f"{text!r} must be an absolute path (or start with ~/)")
    if "**" in text:
        r.fail(
            "kernels",
            "environments",
            f"{text!r}: ** is not supported; give each level, e.g. /data/*/envs/*",
        )
    return os.path.normpath(text)


def refuse_own_kernelspecs(r: Reader, lab: LabConfig) -> None:
    """[kernels] environments is jlservice's kernelspec manager: another one set in
    [lab] options (nb_conda_kernels' CondaKernelSpecManager) would replace it."""
    for key, value in lab.options.items():
        if key.rpartition(".")[2] == "kernel_spec_manager_class":
            r.fail(
                "kernels",
                "environments",
                f"[lab] options sets {key} = {value!r}, which would replace the kernelspec "
                "manager that lists the environments: remove one of the two",
            )
