"""JupyterLab's private dir: its token, cookie secret, password hash and TLS files, and its
own runtime dir, made so that the lab user can read them but never swap them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from jlservice import files
from jlservice.errors import CannotStartNow
from jlservice.start.launcher import (
    ADOPTION_MODULE,
    KERNELS_MODULE,
    KERNELSPECS_MODULE,
    LISTENING_MODULE,
    NOTICES_MODULE,
    SERVER_CONFIG,
    TLS_CERT,
    TLS_KEY,
    Launch,
    runtime_dir_mode,
)

INLAB = Path(__file__).resolve().parents[1] / "inlab"
# [kernels] survive_restarts: the kernel manager, the adoption it uses, and the server
# extension that serves jlservice's listening socket, under these names.
KEEPING_MODULES = {
    f"{KERNELS_MODULE}.py": INLAB / "kernels.py",
    f"{ADOPTION_MODULE}.py": INLAB / "adoption.py",
    f"{LISTENING_MODULE}.py": INLAB / "listening.py",
}
# [kernels] environments: the kernelspec manager and what it uses, under these names.
ENVIRONMENT_MODULES = {
    f"{KERNELSPECS_MODULE}.py": INLAB / "kernelspecs.py",
    "jlservice_environments.py": INLAB / "environments.py",
    "jlservice_envglob.py": INLAB / "envglob.py",
    "jlservice_envprefix.py": INLAB / "envprefix.py",
    "jlservice_envnames.py": INLAB / "envnames.py",
    "jlservice_activate.py": INLAB / "activate.py",
}


def prepare(launch: Launch, runtime_dir: Path, token: str, cookie_secret: bytes) -> None:
    """The secrets in place, for every start, cold or warm."""
    try:
        prepare_private_dir(launch, runtime_dir, token, cookie_secret)
    except OSError as exc:
        raise CannotStartNow(f"cannot prepare {launch.private_dir}: {exc.strerror}") from None


def prepare_private_dir(
    launch: Launch, runtime_dir: Path, token: str, cookie_secret: bytes
) -> None:
    """Give JupyterLab its token, cookie secret, password hash and TLS files, readable by
    its user alone.

    When root switches users, `private_dir` itself stays root's (0711): the user can reach
    the files in it but cannot replace them, or its `runtime` directory, with symlinks that
    root would then follow. Its `runtime` directory is made anew for a new lab user. The
    token file has no trailing newline: jupyter_server reads it verbatim.
    """
    owner = (launch.account.uid, launch.account.gid)
    ensure_private_dir(launch, runtime_dir)
    _drop_if_foreign(launch.jupyter_runtime_dir, launch.account.uid)
    files.ensure_dir(launch.jupyter_runtime_dir, 0o700, owner=owner)
    # An empty token file turns token login off ([auth] token = false).
    _give(launch.token_file, token.encode() if launch.token_login else b"", owner)
    _give(launch.cookie_secret_file, cookie_secret, owner)
    files.ensure_dir(launch.extensions_config.parent.parent, 0o755)
    files.ensure_dir(launch.extensions_config.parent, 0o755)
    (launch.private_dir / "server_config.json").unlink(missing_ok=True)  # the hash before 0.2
    for name in (SERVER_CONFIG, TLS_CERT, TLS_KEY):
        if name in launch.files:
            _give(launch.private_dir / name, launch.files[name], owner)
        else:  # no longer configured: no stale key or hash left behind
            (launch.private_dir / name).unlink(missing_ok=True)
    files.ensure_dir(launch.inlab_dir, 0o755)
    _install_module(launch.inlab_dir / f"{NOTICES_MODULE}.py", INLAB / "notices.py")
    enabled = {"ServerApp": {"jpserver_extensions": dict.fromkeys(launch.server_extensions, True)}}
    _install(launch.extensions_config, json.dumps(enabled, indent=1).encode())
    if launch.keep_kernels:
        _prepare_kernels(launch)
    if launch.environments:
        for name, source in ENVIRONMENT_MODULES.items():
            _install_module(launch.inlab_dir / name, source)


def ensure_private_dir(launch: Launch, runtime_dir: Path) -> None:
    files.ensure_dir(runtime_dir, runtime_dir_mode(launch))
    files.ensure_dir(launch.private_dir, 0o711 if launch.switch_user else 0o700)


def _prepare_kernels(launch: Launch) -> None:
    """The kernel manager's modules, root's and readable (Python lists their directory),
    and the FIFO the kernels write their output to, the lab user's.

    A module is rewritten only when it differs: its directory is on the warm parent's
    sys.path, which it watches, and an unchanged file must not make it stale.
    """
    for name, source in KEEPING_MODULES.items():
        _install_module(launch.inlab_dir / name, source)
    _ensure_fifo(launch.kernel_output, launch.account.uid, launch.account.gid)


def _install_module(module: Path, source_path: Path) -> None:
    """A module of jlservice.inlab, root's and readable, written only when it differs."""
    _install(module, source_path.read_bytes())


def _install(path: Path, content: bytes) -> None:
    """`content` at `path`, root's and readable, written only when it differs (the warm
    parent watches Python's and Jupyter's paths: an unchanged file must not make it stale)."""
    try:
        current = path.read_bytes() if not path.is_symlink() else None
    except OSError:
        current = None
    if current != content:
        files.write_atomic(path, content, mode=0o644)


def _ensure_fifo(path: Path, uid: int, gid: int) -> None:
    """A FIFO of `uid` at `path` (another user's, or anything else there, is replaced)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISFIFO(st.st_mode) and st.st_uid == uid:
        return
    if st is not None:
        path.unlink()
    os.mkfifo(path, 0o600)
    os.chown(path, uid, gid)
    os.chmod(path, 0o600)


def _give(path: Path, data: bytes, owner: tuple[int, int]) -> None:
    """Write what the file does not hold already: a restart with the same secrets writes
    nothing, and so works on a full disk."""
    if not files.holds(path, data, owner=owner):
        files.write_atomic(path, data, owner=owner)


def _drop_if_foreign(path: Path, uid: int) -> None:
    """Remove JupyterLab's runtime dir if it belongs to anyone but `uid`: what another lab
    user left there (files, links to anywhere) must not be handed to this one.

    rmtree works through directory fds and removes symlinks without following them; the
    directory holding `path` is root's, so the old user cannot swap `path` itself.
    """
    import shutil

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        path.unlink()
