"""Checks of [kernels] environments and of nb_conda_kernels' conda.

Whatever they look at is the lab user's (environments, conda): root never reads it, and
never runs it. The environments are found, and conda is asked, by a process of the lab
user (`python -I -S …/inlab/environments.py`, the file JupyterLab runs, with its PATH;
`conda info --json`), which sees what JupyterLab will see; its answer is bounded.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from typing import Any, NamedTuple

from jlservice import disk, users
from jlservice.admin.doctor.context import NEEDS_CONFIG, Context, Result, not_checked
from jlservice.errors import NotAnswering
from jlservice.start import conda, launcher
from jlservice.start.private_dir import ENVIRONMENT_MODULES

TIMEOUT_S = 30.0
MAX_ANSWER = 4 << 20


class Answer(NamedTuple):
    returncode: int | None  # None: killed, for answering more than MAX_ANSWER
    stdout: bytes
    stderr: bytes


def _as_lab_user(
    account: users.Account, argv: list[str], path: str = "/usr/local/bin:/usr/bin:/bin"
) -> Answer:
    switch: dict[str, Any] = {}
    if os.geteuid() == 0 and account.uid != 0:
        switch = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
    env = {"PATH": path, "HOME": account.home, "LANG": "C.UTF-8"}
    pipe = subprocess.PIPE
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe, cwd="/", env=env, **switch
    )
    try:
        stdout, stderr = _read_bounded(proc, argv)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    big = max(len(stdout), len(stderr)) > MAX_ANSWER
    return Answer(None if big else proc.returncode, stdout, stderr)


def _read_bounded(proc: subprocess.Popen, argv: list[str]) -> tuple[bytes, bytes]:
    """At most MAX_ANSWER + 1 bytes of each of `proc`'s stdout and stderr, until both end,
    one is over, or TIMEOUT_S passed (subprocess.TimeoutExpired)."""
    read: dict[int, bytearray] = {proc.stdout.fileno(): bytearray()}  # type: ignore[union-attr]
    read[proc.stderr.fileno()] = bytearray()  # type: ignore[union-attr]
    deadline = time.monotonic() + TIMEOUT_S
    with selectors.DefaultSelector() as selector:
        for fd in read:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(argv, TIMEOUT_S)
            for key, _ in selector.select(left):
                chunk = os.read(key.fd, 1 << 16)
                read[key.fd] += chunk
                if not chunk:
                    selector.unregister(key.fd)
                elif len(read[key.fd]) > MAX_ANSWER:
                    return tuple(bytes(b) for b in read.values())  # type: ignore[return-value]
    out, err = read.values()
    return bytes(out), bytes(err)


def _answer(proc: Answer) -> Any:
    """The JSON a lab user's process printed; ValueError saying why there is none."""
    if proc.returncode is None:
        raise ValueError(f"answered more than {MAX_ANSWER >> 20} MiB")
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines()
        last = said[-1][:200] if said else ""
        raise ValueError(f"exited with status {proc.returncode}: {last}")
    try:
        return json.loads(proc.stdout)
    except (ValueError, RecursionError):
        raise ValueError("did not answer JSON") from None


def _discover(ctx: Context) -> list[dict[str, Any]]:
    """What JupyterLab's kernelspec manager finds: the file it runs, with JupyterLab's PATH
    (kernel programs are looked for on it), skipping JupyterLab's own environment."""
    assert ctx.config is not None
    launch = launcher.build(ctx.config)
    source = str(ENVIRONMENT_MODULES["jlservice_environments.py"])
    own = os.path.dirname(os.path.dirname(os.path.abspath(ctx.config.lab.command[0])))
    argv = [sys.executable, "-I", "-S", source, "--skip", own, *ctx.config.kernels.environments]
    found = _answer(_as_lab_user(ctx.config.account, argv, launch.env["PATH"]))
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
    result = _judge(name, found, patterns, ctx.config.account.uid)
    if os.geteuid() not in (0, ctx.config.account.uid):  # it could not switch users
        seen = f" (looked as uid {os.geteuid()}, not as {ctx.config.lab.user}: run as root)"
        result = result._replace(detail=result.detail + seen)
    return result


def _judge(name: str, found: list[dict[str, Any]], patterns: tuple[str, ...], uid: int) -> Result:
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
    foreign = [
        f"{e.get('name')} ({e.get('prefix')}, uid {e.get('owner')})"
        for e in found
        if e.get("owner") not in (0, uid)
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
