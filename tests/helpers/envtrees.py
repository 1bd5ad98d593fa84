"""Real environment trees for [kernels] environments: venvs with ipykernel (pip) and
"conda-style" prefixes (conda-meta/, a Python made by `venv --copies`, activate.d scripts,
kernelspecs shipped in share/jupyter/kernels), as conda and pip leave them. No conda is
reachable here, so the conda parts are made by hand, file for file.

pip runs once (`pip_env`, ~20 s); every other environment gets a copy of its
site-packages (hard links where root keeps it): the same files pip would put there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from jlservice import users

PYTHON = "/usr/bin/python3"  # the system Python: the users the tests make can run it
ACTIVATED = "JLST_ACTIVATED"  # what the activate.d script of `activated_env` exports
# A stand-in for R: IRkernel's argv (R --slave -e IRkernel::main() --args FILE), served by
# the environment's ipykernel, so that a test can look from inside it.
R_STANDIN = """#!/bin/sh
for last; do :; done
exec "$(dirname "$0")/python" -m ipykernel_launcher -f "$last"
"""
IR_KERNEL = {
    "argv": ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
    "display_name": "R",
    "language": "R",
}


def _site_packages(prefix: Path) -> Path:
    return next((prefix / "lib").glob("python3*/site-packages"))


def pip_env(prefix: Path) -> Path:
    """A venv (`--copies`: its own interpreter, as conda has) with ipykernel from pip."""
    subprocess.run([PYTHON, "-m", "venv", "--copies", str(prefix)], check=True)
    subprocess.run(
        [str(prefix / "bin" / "python"), "-m", "pip", "install", "-q", "ipykernel"],
        check=True,
        timeout=600,
    )
    return prefix


def copy_env(source: Path, prefix: Path, conda: bool, link: bool = True) -> Path:
    """A new environment at `prefix` with `source`'s ipykernel and kernelspecs: a venv
    (`--copies`) of its own, and, for `conda`, a conda-meta/ directory."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([PYTHON, "-m", "venv", "--copies", "--without-pip", str(prefix)], check=True)
    target = _site_packages(prefix)
    shutil.rmtree(target)
    cp = ["cp", "-al" if link else "-a", str(_site_packages(source)), str(target)]
    subprocess.run(cp, check=True)
    shutil.copytree(source / "share" / "jupyter", prefix / "share" / "jupyter")
    if conda:
        (prefix / "conda-meta").mkdir()
        (prefix / "conda-meta" / "history").write_text("==> 2024-01-01 00:00:00 <==\n")
    return prefix


def add_activate_script(prefix: Path, name: str, text: str) -> None:
    scripts = prefix / "etc" / "conda" / "activate.d"
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / name).write_text(text)


def add_r_kernel(prefix: Path) -> None:
    (prefix / "bin" / "R").write_text(R_STANDIN)
    (prefix / "bin" / "R").chmod(0o755)
    directory = prefix / "share" / "jupyter" / "kernels" / "ir"
    directory.mkdir(parents=True)
    (directory / "kernel.json").write_text(json.dumps(IR_KERNEL))


def broken_env(prefix: Path) -> Path:
    """A conda-style prefix with a kernelspec of bad JSON, and ipykernel but no python."""
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    (prefix / "lib" / "python3.11" / "site-packages" / "ipykernel_launcher.py").write_text("")
    bad = prefix / "share" / "jupyter" / "kernels" / "bad"
    bad.mkdir(parents=True)
    (bad / "kernel.json").write_text('{"argv": ["x", ')
    return prefix


def give(path: Path, account: users.Account) -> None:
    """`path` and everything under it to `account` (a tree in its home is its own)."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            os.chown(os.path.join(dirpath, name), account.uid, account.gid, follow_symlinks=False)
    os.chown(path, account.uid, account.gid)


def fake_conda(root: Path, envs: list[Path]) -> Path:
    """`root`/bin/conda answering `conda info --json` as conda does (the keys
    nb_conda_kernels reads), for the install at `root`; any other command fails."""
    info = {
        "conda_version": "24.1.2",
        "root_prefix": str(root),
        "conda_prefix": str(root),
        "envs_dirs": [str(root / "envs")],
        "envs": [str(root), *map(str, envs)],
        "platform": "linux-64",
    }
    conda = root / "bin" / "conda"
    conda.parent.mkdir(parents=True, exist_ok=True)
    conda.write_text(
        '#!/bin/sh\n[ "$*" = "info --json" ] || { echo "fake conda: $*" >&2; exit 2; }\n'
        f"cat <<'EOF'\n{json.dumps(info)}\nEOF\n"
    )
    conda.chmod(0o755)
    return conda


# What nb_conda_kernels' CondaKernelSpecManager does at its boundary with the machine
# (it is on conda's channels only, not on PyPI): `$CONDA_EXE info --json` (`conda` without
# it), then a kernel conda-env-NAME-py for each environment listed that has a python.
NB_CONDA_STANDIN = """
import json, os, subprocess
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

CONDA_EXE = os.environ.get("CONDA_EXE", "conda")


class CondaKernelSpecManager(KernelSpecManager):
    def _envs(self):
        try:
            info = json.loads(subprocess.check_output([CONDA_EXE, "info", "--json"]))
        except Exception as err:
            self.log.error("[nb_conda_kernels] couldn't call conda: %s", err)
            return {}
        return {
            "conda-env-%s-py" % os.path.basename(e): e
            for e in info["envs"]
            if os.path.exists(os.path.join(e, "bin", "python"))
        }

    def find_kernel_specs(self):
        return {**super().find_kernel_specs(), **self._envs()}

    def get_kernel_spec(self, name):
        prefix = self._envs().get(name)
        if prefix is None:
            return super().get_kernel_spec(name)
        python = os.path.join(prefix, "bin", "python")
        argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return KernelSpec(argv=argv, display_name=name, language="python", resource_dir=prefix)
"""


def nb_conda_standin(directory: Path) -> Path:
    """A directory holding the stand-in package nb_conda_kernels, for PYTHONPATH."""
    package = directory / "nb_conda_kernels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(NB_CONDA_STANDIN)
    return directory
