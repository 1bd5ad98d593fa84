"""Whether a JupyterLab command can start from a warm parent, and what the parent bakes in.

Qualify: a Python script with a Python shebang (`jupyter-lab` as pip installs it, or any
other) and `PYTHON -m MODULE`. Anything else (a shell wrapper, a binary, an interpreter
option) starts cold, as it always did.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

from jlservice import users
from jlservice.start import launcher

# Loaded by every jupyter_server application: most of a cold start is importing it.
SERVER_MODULE = "jupyter_server.serverapp"
_PYTHON = re.compile(r"python[0-9.]*")
_IMPORT = re.compile(rb"^from\s+([\w.]+)\s+import\s+\w+", re.MULTILINE)


@dataclass(frozen=True)
class Recipe:
    """What a warm parent is made of: two launches with equal recipes can share one."""

    interpreter: str
    script: str | None  # run as a file (sys.argv[0] = script)…
    module: str | None  # …or as `-m module`
    path0: str  # sys.path[0] as Python sets it: the script's directory, or the cwd for -m
    preload: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    account: users.Account
    switch_user: bool

    def args(self, launch: launcher.Launch) -> list[str]:
        """The server's sys.argv (for -m, runpy replaces [0] with the module's file)."""
        skip = 1 if self.script else 3
        return [self.script or "-m", *launch.argv[skip:]]


def for_launch(launch: launcher.Launch) -> Recipe | str:
    """The recipe for `launch`, or why it must start cold."""
    argv = launch.argv
    env = tuple(sorted(launch.env.items()))
    if _is_python(argv[0]):
        if len(argv) < 3 or argv[1] != "-m":
            return f"{argv[0]} is run with options other than -m MODULE"
        module = argv[2]
        preload = (SERVER_MODULE, module)
        return Recipe(
            argv[0], None, module, launch.cwd, preload, env, launch.account, launch.switch_user
        )
    try:
        head = users.read_head(argv[0], 4096)
    except OSError as exc:
        return f"cannot read {argv[0]}: {exc.strerror}"
    if head is None:
        return f"{argv[0]} is not a regular file"
    interpreter = _shebang_python(head, launch.env.get("PATH", ""))
    if interpreter is None:
        return f"{argv[0]} is not a Python script"
    preload = [SERVER_MODULE]
    if (imported := _IMPORT.search(head)) is not None:
        preload.insert(0, imported.group(1).decode())
    return Recipe(
        interpreter,
        argv[0],
        None,
        os.path.dirname(argv[0]),
        tuple(preload),
        env,
        launch.account,
        launch.switch_user,
    )


def _is_python(program: str) -> bool:
    return _PYTHON.fullmatch(os.path.basename(program)) is not None


def _shebang_python(head: bytes, path: str) -> str | None:
    """The interpreter named by `#!/…/python3` or `#!/usr/bin/env python3`, without options."""
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if words[:1] == ["/usr/bin/env"] and len(words) == 2:
        words = [shutil.which(words[1], path=path) or ""]
    if len(words) != 1 or not os.path.isabs(words[0]) or not _is_python(words[0]):
        return None
    return words[0]
