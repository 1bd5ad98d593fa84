"""nb_conda_kernels under the service: the `conda` it runs, found where a shell would have it.

nb_conda_kernels (CondaKernelSpecManager in [lab] options) runs `$CONDA_EXE info --json`
(`conda` on PATH without it) to find the environments. In a login shell `conda activate`
set CONDA_EXE; under systemd nothing did, and `conda` is a shell function, not on PATH:
it lists no environment. jlservice puts the conda of the install its `[lab] command`
belongs to on JupyterLab's PATH: the directories where that install keeps it, at the end.
Root looks at none of them (a home on a network filesystem whose server is gone would hang
the supervisor, and what is there would make the launch depend on the filesystem): which
one holds `conda` is found by nb_conda_kernels, as the lab user.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from jlservice.config import OptionValue

MANAGER = "CondaKernelSpecManager"


def uses_nb_conda_kernels(options: Mapping[str, OptionValue]) -> bool:
    """Whether [lab] options make nb_conda_kernels JupyterLab's kernelspec manager."""
    return any(
        key.startswith(f"{MANAGER}.")
        or (key.endswith(".kernel_spec_manager_class") and MANAGER in str(value))
        for key, value in options.items()
    )


def directories(command: str) -> list[str]:
    """Where the conda of the install holding `command` (its bin/) is, in conda's order:
    condabin/ then bin/, of its prefix and, for an environment in an install's envs/, of
    the install's root."""
    prefix = os.path.dirname(os.path.dirname(os.path.abspath(command)))
    roots = [prefix]
    if os.path.basename(os.path.dirname(prefix)) == "envs":
        roots.append(os.path.dirname(os.path.dirname(prefix)))
    return [os.path.join(root, d) for d in ("condabin", "bin") for root in roots]


def conda_env(command: str, env: Mapping[str, str]) -> dict[str, str]:
    """What JupyterLab's environment needs for nb_conda_kernels: the install's conda
    directories on PATH, after JupyterLab's own (a bare `python` stays its). Nothing when
    CONDA_EXE names one already."""
    if env.get("CONDA_EXE"):
        return {}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p]
    path += [d for d in directories(command) if d not in path]
    return {"PATH": os.pathsep.join(path)}
