"""Checks of this machine: configuration, notebook dir, supervisor, port, certificate."""

from __future__ import annotations

import functools
import socket
import time
from urllib.parse import urlsplit

from jlservice import disk, net, state
from jlservice.admin.doctor.context import (
    NEEDS_CONFIG,
    PORT_TAKEN_FIX,
    Context,
    Result,
    not_checked,
)
from jlservice.errors import NotAnswering

STATVFS_TIMEOUT_S = 2.0


def check_config(ctx: Context) -> Result:
    where = str(ctx.path) if ctx.path else "built-in defaults"
    if ctx.config is None:  # the error itself says what to do
        return Result("config", False, ctx.config_error or "invalid")
    return Result("config", True, f"{where} is valid")


def check_notebook_dir(ctx: Context) -> Result:
    name = "notebook dir"
    if ctx.config is None:
        return not_checked(name, NEEDS_CONFIG)
    account = ctx.config.account
    path = ctx.config.lab.notebook_dir
    try:
        owner = disk.stat(path, disk.ANSWER_WITHIN_S).st_uid
    except NotAnswering:
        return Result(name, False, disk.not_answering(path), "mount it again, or move notebook_dir")
    except OSError as exc:
        return Result(name, False, f"cannot look at {path}: {exc.strerror}", "check it exists")
    if owner != account.uid:
        return Result(
            name,
            False,
            f"{path} belongs to uid {owner}, not to {account.name} (uid {account.uid}): "
            "notebooks could not be saved",
            f"chown -R {account.name}: {path}",
        )
    hidden = [p for p in path.parts if p.startswith(".") and p not in (".", "..")]
    if hidden:
        return Result(
            name,
            False,
            f"{path} is inside the hidden directory {hidden[0]!r}: JupyterLab refuses to "
            "serve hidden directories",
            "choose a notebook_dir without a dot-directory in its path",
        )
    space = disk.read_space(path, STATVFS_TIMEOUT_S)
    if space is None:
        return Result(
            name,
            False,
            f"the filesystem of {path} did not say how much space it has within "
            f"{STATVFS_TIMEOUT_S:g} s: saving notebooks would hang",
            "check that filesystem (a network filesystem whose server is gone?)",
        )
    if space.low:
        return Result(
            name,
            False,
            f"only {space.describe()} on the filesystem of {path}: saving notebooks and files "
            "will soon fail",
            "free space on that filesystem, or move notebook_dir",
        )
    return Result(name, True, f"{path} exists and belongs to {account.name}; {space.describe()}")


def check_supervisor(ctx: Context) -> Result:
    if ctx.state is None:  # the state error says what to do
        if ctx.state_error is None:
            return not_checked("supervisor", NEEDS_CONFIG)
        return Result("supervisor", False, ctx.state_error)
    if not ctx.running:
        return Result(
            "supervisor",
            False,
            f"not running (last status: {ctx.state.status})",
            "systemctl start jlservice (or `jlservice run`); its log says why it stopped",
        )
    s = ctx.state
    detail = f"running (pid {s.supervisor_pid}), JupyterLab {s.status}"
    if s.status != state.READY:
        why = f": {s.last_error}" if s.last_error else ""
        return Result("supervisor", False, detail + why, "see `jlservice status` and its log")
    return Result("supervisor", True, f"{detail} (pid {s.lab_pid})")


@functools.cache  # one doctor run asks twice; walking every process's sockets costs ~50 ms
def listeners(port: int) -> dict[int, list[str]]:
    """Processes listening on TCP `port`: {pid: [addresses]} (needs root to see others')."""
    import psutil  # only for this: the doctor is not on the `jlservice token` path

    found: dict[int, list[str]] = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            found.setdefault(conn.pid, []).append(conn.laddr.ip)
    return found


def _ours(ctx: Context) -> int | None:
    """The pid of the JupyterLab jlservice runs, if it runs."""
    return ctx.state.lab_pid if ctx.running and ctx.state.lab_pid else None


def check_port(ctx: Context) -> Result:
    if ctx.config is None:
        return not_checked("port", NEEDS_CONFIG)
    if ctx.stranger is not None:
        return Result(
            "port",
            False,
            f"{ctx.stranger}: the token is not sent there",
            PORT_TAKEN_FIX,
        )
    lab = ctx.config.lab
    address = f"{lab.ip}:{lab.port}"
    holders = listeners(lab.port)
    ours = _ours(ctx)
    if ours in holders:
        return Result("port", True, f"{address} is held by jlservice's JupyterLab (pid {ours})")
    # [kernels] survive_restarts: jlservice itself holds the listening socket across
    # JupyterLab's restarts, also while none runs (after a crash, between failed starts).
    supervisor = ctx.state.supervisor_pid if ctx.running else None
    others = [pid for pid in holders if pid != supervisor]
    if others:
        pid = others[0]
        return Result(
            "port",
            False,
            f"{address} is in use by pid {pid} ({_name(pid)}), not by jlservice's JupyterLab",
            f"stop pid {pid}, or change [lab] port",
        )
    if supervisor in holders:
        return Result(
            "port",
            True,
            f"{address} is held by jlservice (pid {supervisor}) for the next JupyterLab "
            "(none runs now)",
        )
    problem = net.check_port(lab.ip, lab.port)
    if problem is None:
        return Result("port", True, f"{address} is free for JupyterLab")
    return Result("port", False, problem, "fix [lab] ip or port")


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def check_address(ctx: Context) -> Result:
    name = "address"
    if ctx.config is None:
        return not_checked(name, NEEDS_CONFIG)
    lab = ctx.config.lab
    ours = _ours(ctx)
    if ours is None:
        return not_checked(name, "JupyterLab is not running")
    s = ctx.state
    if (s.ip, s.port, s.base_url) != (lab.ip, lab.port, lab.base_url):
        return Result(
            name,
            False,
            f"JupyterLab runs on {s.ip}:{s.port}{s.base_url}, the configuration says "
            f"{lab.ip}:{lab.port}{lab.base_url}",
            "`jlservice reload` (and `jlservice status` for why an earlier one failed)",
        )
    addresses = listeners(lab.port).get(ours, [])
    if lab.ip not in addresses:
        where = ", ".join(addresses) or "nowhere"
        return Result(
            name,
            False,
            f"JupyterLab (pid {ours}) listens on {where}, not {lab.ip}:{lab.port}",
            "restart jlservice",
        )
    return Result(name, True, f"JupyterLab listens on {lab.ip}:{lab.port}, as configured")


def user_hosts(ctx: Context) -> list[str]:
    """The host names people use to reach JupyterLab: public_url's, else the listen
    address (this machine's name on a wildcard address)."""
    lab = ctx.config.lab
    if lab.public_url:
        return [urlsplit(lab.public_url).hostname]
    if net.is_wildcard(lab.ip):
        return [socket.gethostname()]
    return [lab.ip]


def check_tls(ctx: Context) -> Result:
    name = "tls"
    if ctx.config is None:
        return not_checked(name, NEEDS_CONFIG)
    tls_config = ctx.config.tls
    if not tls_config.enabled:
        return Result(name, None, "not configured: JupyterLab serves plain http")
    from jlservice.admin import tls

    info = tls.inspect(tls_config.cert_pem)
    until = time.strftime("%Y-%m-%d", time.gmtime(info.not_after))
    if info.not_after <= time.time():
        return Result(
            name,
            False,
            f"{tls_config.certfile} expired on {until}: browsers refuse it",
            "renew it, e.g. `jlservice cert`",
        )
    wrong = [h for h in user_hosts(ctx) if not tls.matches(info.names, h)]
    if wrong:
        return Result(
            name,
            False,
            f"{tls_config.certfile} names {', '.join(info.names) or 'nothing'}, but browsers "
            f"will ask for {', '.join(wrong)}",
            f"`jlservice cert --hostname {wrong[0]}`, or a certificate for that name",
        )
    soon = tls.expiry_warning(tls_config.cert_pem)
    detail = f"{tls_config.certfile} is valid until {until} for {', '.join(info.names)}"
    return Result(name, True, detail + (f" (renew soon: {soon})" if soon else ""))
