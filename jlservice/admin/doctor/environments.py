"""Checks of [kernels] environments and of nb_conda_kernels' conda.

Whatever they look at is the lab user's (environments, conda): root never reads it, and
never runs it. The environments are found, and conda is asked, by a process of the lab
user (`python -I -m jlservice.inlab.environments`, `conda info --json`), which sees what
JupyterLab will see; its answer is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

from jlservice import disk, users
from jlservice.admin.doctor.context import NEEDS_CONFIG, Context, Result, not_checked
from jlservice.errors import NotAnswering
from jlservice.start import conda, launcher

TIMEOUT_S = 30.0
MAX_ANSWER = 4 << 20


def _as_lab_user(
    account: users.Account, argv: list[str], path: str = "/usr/local/bin:/usr/bin:/bin"
) -> subprocess.CompletedProcess:
    switch: dict[str, Any] = {}
    if os.geteuid() == 0 and account.uid != 0:
        switch = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
    env = {"PATH": path, "HOME": account.home, "LANG": "C.UTF-8"}
    return subprocess.run(
        argv, capture_output=True, timeout=TIMEOUT_S, cwd="/", env=env, check=False, **switch
    )


def _answer(proc: subprocess.CompletedProcess) -> Any:
    """The JSON a lab user's process printed; ValueError saying why there is none."""
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(f"exited with status {proc.returncode}: {said[-1] if said else ''}")
    if len(proc.stdout) > MAX_ANSWER:
        raise ValueError(f"answered more than {MAX_ANSWER >> 20} MiB")
    try:
        return json.loads(proc.stdout)
    except (ValueError, RecursionError):
        raise ValueError("did not answer JSON") from None


def _discover(ctx: Context) -> list[dict[str, Any]]:
    argv = [sys.executable, "-I", "-m", "jlservice.inlab.environments"]
    found = _answer(_as_lab_user(ctx.config.account, [*argv, *ctx.config.kernels.environments]))
    if not isinstance(found, list) or not all(isinstance(e, dict) for e in found):
        raise ValueError("did not answer a list of environments")
    return found


def _describe(env: dict[str, Any]) -> str:
    kernels = ", ".join(str(k.get("name")) for k in env.get("kernels") or []) or "no kernel"
    return f"{env.get('name')} ({env.get('kind')}: {kernels})"


def check_environments(ctx: Context) -> Result:
    name = "environments"
    if ctx.config is None:
        return not_checked(name, NEEDS_CONFIG)
    patterns = ctx.config.kernels.environments
    if not patterns:
        return Result(name, None, "not configured: JupyterLab lists its own kernelspecs")
    try:
        found = _discover(ctx)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return Result(name, False, f"looking for them as {ctx.config.lab.user} failed: {exc}")
    if not found:
        return Result(
            name,
            False,
            f"none found in {', '.join(patterns)}",
            "fix [kernels] environments, or create one (python -m venv, pip install ipykernel)",
        )
    detail = f"{len(found)} found: " + "; ".join(_describe(e) for e in found)
    broken = [
        f"{e.get('name')} ({e.get('prefix')}): {problem}"
        for e in found
        for problem in e.get("problems") or []
    ]
    trusted = (0, ctx.config.account.uid)
    foreign = [
        f"{e.get('name')} ({e.get('prefix')}, uid {e.get('owner')})"
        for e in found
        if e.get("owner") not in trusted
    ]
    fixes = []
    if broken:
        detail += f"; broken: {'; '.join(broken)}"
        fixes.append("fix or remove those environments (JupyterLab skips what is broken)")
    if foreign:
        detail += f"; owned by other users: {'; '.join(foreign)}"
        fixes.append(
            "a kernel of those runs code its owner can change, as you: leave them out of "
            "[kernels] environments unless you trust their owners"
        )
    if fixes:
        return Result(name, False, detail, "; ".join(fixes))
    return Result(name, True, detail)


def check_conda(ctx: Context) -> Result:
    name = "conda"
    if ctx.config is None:
        return not_checked(name, NEEDS_CONFIG)
    lab = ctx.config.lab
    if not conda.uses_nb_conda_kernels(lab.options):
        return Result(name, None, "not checked: nb_conda_kernels is not configured")
    env = launcher.build(ctx.config).env
    path, exe = env["PATH"], env.get("CONDA_EXE")
    if not exe:
        try:  # the lab user's directories: a dead network filesystem must not hang the doctor
            exe = disk.call(path, lambda: shutil.which("conda", path=path), disk.ANSWER_WITHIN_S)
        except NotAnswering:
            return Result(name, False, f"conda on JupyterLab's PATH: {disk.not_answering(path)}")
    if exe is None:
        return Result(
            name,
            False,
            f"nb_conda_kernels is configured, but there is no conda next to {lab.command[0]} "
            f"({', '.join(conda.directories(lab.command[0]))}) and no CONDA_EXE: it will list "
            "no environment",
            '[lab] env CONDA_EXE = "/path/to/conda" (your install\'s bin/conda)',
        )
    try:
        info = _answer(_as_lab_user(ctx.config.account, [exe, "info", "--json"], path))
        envs = info.get("envs") if isinstance(info, dict) else None
        if not isinstance(envs, list):
            raise ValueError("answered no list of envs")
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return Result(
            name,
            False,
            f"{exe} info --json, run as {lab.user}, failed: {exc}",
            "fix that conda, or point [lab] env CONDA_EXE at a working one",
        )
    names = ", ".join(os.path.basename(str(e)) or str(e) for e in envs[:20])
    return Result(name, True, f"{exe} lists {len(envs)} environments for nb_conda_kernels: {names}")
