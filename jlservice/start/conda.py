"""nb_conda_kernels under the service: the `conda` it runs, found where a shell would have it.

nb_conda_kernels (CondaKernelSpecManager in [lab] options) runs `$CONDA_EXE info --json`
(`conda` on PATH without it) to find the environments. In a login shell `conda activate`
set CONDA_EXE; under systemd nothing did, and `conda` is a shell function, not on PATH:
it lists no environment. jlservice gives JupyterLab the conda of the install its `[lab]
command` belongs to. It only looks (stat), never runs it: it is the lab user's to run.
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


def candidates(command: str) -> list[str]:
    """Where the conda of the install holding `command` (its bin/) would be: in its
    prefix, or, for an environment in an install's envs/, in the install's root."""
    prefix = os.path.dirname(os.path.dirname(os.path.abspath(command)))
    roots = [prefix]
    if os.path.basename(os.path.dirname(prefix)) == "envs":
        roots.append(os.path.dirname(os.path.dirname(prefix)))
    return [os.path.join(root, d, "conda") for root in roots for d in ("condabin", "bin")]


def find_conda(command: str, env: Mapping[str, str]) -> str | None:
    """CONDA_EXE if JupyterLab's environment names one, else the install's own conda."""
    if env.get("CONDA_EXE"):
        return env["CONDA_EXE"]
    return next((p for p in candidates(command) if os.path.isfile(p)), None)


def conda_env(command: str, env: Mapping[str, str]) -> dict[str, str]:
    """What JupyterLab's environment needs for nb_conda_kernels: CONDA_EXE, and conda's
    directory on PATH (after JupyterLab's own, so that a bare `python` stays its)."""
    conda = find_conda(command, env)
    if conda is None:
        return {}
    path = env.get("PATH", "").split(os.pathsep)
    bindir = os.path.dirname(conda)
    if bindir not in path:
        path.append(bindir)
    return {"CONDA_EXE": conda, "PATH": os.pathsep.join(p for p in path if p)}
