"""Build the exact JupyterLab launch (argv, environment, user, files) and start it.

The launch is a frozen value: two launches that compare equal start the same server, which is
how a reload decides whether JupyterLab must restart.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from jlservice import files, users
from jlservice.config import Config, OptionValue
from jlservice.errors import CannotStartNow, LaunchError, PortInUse
from jlservice.supervisor import notify, probe

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Never handed to JupyterLab: systemd's per-service settings and our own.
_PRIVATE_ENV = {
    *notify.PRIVATE_ENV,
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JUPYTER_TOKEN",
    "JUPYTER_TOKEN_FILE",
    "JUPYTER_RUNTIME_DIR",
    "JLSERVICE_CONFIG",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
    "CACHE_DIRECTORY",
    "LOGS_DIRECTORY",
    "INVOCATION_ID",
    "MAINPID",
    "MANAGERPID",
    "SYSTEMD_EXEC_PID",
}
# Files jlservice may hand JupyterLab in its private dir, next to the token.
SERVER_CONFIG, TLS_CERT, TLS_KEY = "server_config.json", "tls.crt", "tls.key"

# What survives a switch to another user: locale and PATH, nothing of the admin's session.
_KEPT_ACROSS_USERS = ("PATH", "LANG", "LANGUAGE", "TZ")


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    account: users.Account
    switch_user: bool
    umask: int
    private_dir: Path
    ip: str
    port: int
    base_url: str
    scheme: str = "http"
    token_login: bool = True
    # The password hash, certificate and key, by file name: a changed one restarts JupyterLab.
    files: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    # JupyterLab sees only whether it is set (allow_remote_access), so changing the address
    # alone does not restart JupyterLab.
    public_url: str | None = field(default=None, compare=False)

    @property
    def url(self) -> str:
        """The server's address for people: [lab] public_url if set, else this machine's
        name on a wildcard address, else the address."""
        if self.public_url:
            return self.public_url
        host = self.ip if self.ip not in ("0.0.0.0", "::") else socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}{self.base_url}"

    def published(self) -> dict[str, object]:
        """What state.json says about this launch (`jlservice token --url`, `status`)."""
        return {
            "url": self.url,
            "ip": self.ip,
            "port": self.port,
            "base_url": self.base_url,
            "user": self.account.name,
            "notebook_dir": self.cwd,
            "scheme": self.scheme,
            "token_login": self.token_login,
        }

    @property
    def api_url(self) -> str:
        """Where this server answers its unauthenticated readiness probe."""
        return probe.base_url(self.ip, self.port, f"{self.base_url}api", self.scheme)

    @property
    def token_file(self) -> Path:
        return self.private_dir / "token"

    @property
    def cookie_secret_file(self) -> Path:
        return self.private_dir / "cookie_secret"

    @property
    def jupyter_runtime_dir(self) -> Path:
        return self.private_dir / "runtime"


def build(config: Config, environ: Mapping[str, str] | None = None) -> Launch:
    """The launch `config` asks for. Pure apart from reading the password database."""
    environ = os.environ if environ is None else environ
    lab = config.lab
    account = config.account
    switch_user = account.uid != os.geteuid()
    private_dir = config.service.runtime_dir / "lab"
    cookie_name = (
        "jlservice-" + hashlib.sha256(str(config.service.state_dir).encode()).hexdigest()[:12]
    )
    argv = [
        *lab.command,
        f"--ServerApp.ip={lab.ip}",
        f"--ServerApp.port={lab.port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={lab.base_url}",
        f"--ServerApp.root_dir={lab.notebook_dir}",
        "--ServerApp.open_browser=False",
        f"--ServerApp.cookie_secret_file={private_dir / 'cookie_secret'}",
        f"--IdentityProvider.cookie_name={cookie_name}",
    ]
    if account.is_root:
        argv.append("--ServerApp.allow_root=True")
    if lab.public_url:  # behind a proxy: the Host is its name (validation demands a login)
        argv.append("--ServerApp.allow_remote_access=True")
    files = _access_files(config)
    if SERVER_CONFIG in files:  # the hash goes in a file, never on the command line
        argv.append(f"--ServerApp.config_file={private_dir / SERVER_CONFIG}")
    if TLS_CERT in files:
        argv.append(f"--ServerApp.certfile={private_dir / TLS_CERT}")
        argv.append(f"--ServerApp.keyfile={private_dir / TLS_KEY}")
    for key, value in lab.options.items():
        argv.extend(_option_args(key, value))

    if switch_user:
        env = {k: environ[k] for k in _KEPT_ACROSS_USERS if k in environ}
        env.update({k: v for k, v in environ.items() if k.startswith("LC_")})
    else:
        env = {k: v for k, v in environ.items() if k not in _PRIVATE_ENV}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    bindir = os.path.dirname(lab.command[0])
    if bindir not in env["PATH"].split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env["PATH"]
    env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, SHELL=account.shell)
    env.update(lab.env)
    env["JUPYTER_TOKEN_FILE"] = str(private_dir / "token")
    env["JUPYTER_RUNTIME_DIR"] = str(private_dir / "runtime")
    return Launch(
        argv=tuple(argv),
        env=env,
        cwd=str(lab.notebook_dir),
        account=account,
        switch_user=switch_user,
        umask=lab.umask,
        private_dir=private_dir,
        ip=lab.ip,
        port=lab.port,
        base_url=lab.base_url,
        scheme="https" if config.tls.enabled else "http",
        token_login=config.auth.token,
        files=files,
        public_url=lab.public_url,
    )


def _access_files(config: Config) -> dict[str, bytes]:
    """The password hash and TLS files JupyterLab reads from its private dir.

    The user's own jupyter_server_config cannot change the password from the login page
    either: [auth] password_file is the one place it lives.
    """
    files = {}
    if config.auth.password_hash:
        settings = {"hashed_password": config.auth.password_hash, "allow_password_change": False}
        files[SERVER_CONFIG] = json.dumps({"PasswordIdentityProvider": settings}).encode()
    if config.tls.enabled:
        files[TLS_CERT] = config.tls.cert_pem
        files[TLS_KEY] = config.tls.key_pem
    return files


def _option_args(key: str, value: OptionValue) -> list[str]:
    """Traitlets command-line form: lists repeat the flag, tables repeat it with key=value."""
    if isinstance(value, tuple):
        return [f"--{key}={v[0]}={v[1]}" if isinstance(v, tuple) else f"--{key}={v}" for v in value]
    return [f"--{key}={value}"]  # True/False, numbers and strings as traitlets reads them


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
    files.ensure_dir(runtime_dir, runtime_dir_mode(launch))
    files.ensure_dir(launch.private_dir, 0o711 if launch.switch_user else 0o700)
    _drop_if_foreign(launch.jupyter_runtime_dir, launch.account.uid)
    files.ensure_dir(launch.jupyter_runtime_dir, 0o700, owner=owner)
    # An empty token file turns token login off ([auth] token = false).
    files.write_atomic(
        launch.token_file, token.encode() if launch.token_login else b"", owner=owner
    )
    files.write_atomic(launch.cookie_secret_file, cookie_secret, owner=owner)
    for name in (SERVER_CONFIG, TLS_CERT, TLS_KEY):
        if name in launch.files:
            files.write_atomic(launch.private_dir / name, launch.files[name], owner=owner)
        else:  # no longer configured: no stale key or hash left behind
            (launch.private_dir / name).unlink(missing_ok=True)


def runtime_dir_mode(launch: Launch) -> int:
    """[service] runtime_dir: another lab user must get through it to its private files."""
    return 0o755 if launch.switch_user else 0o700


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


def check_port(ip: str, port: int, key: str = "[lab] port") -> str | None:
    """Why a server could not listen on ip:port right now, or None (`key`: what to fix)."""
    try:
        _try_bind(ip, port, key)
    except CannotStartNow as exc:
        return str(exc)
    return None


def _try_bind(ip: str, port: int, key: str = "[lab] port") -> None:
    """Raises PortInUse, or CannotStartNow, if a server could not listen on ip:port now."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {ip} is in use{_holder(port)}; stop it or change {key}"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                where = "[lab] ip" if key == "[lab] port" else key
                raise CannotStartNow(
                    f"{ip} is not an address of this machine; fix {where}"
                ) from None
            raise CannotStartNow(f"cannot listen on {ip}:{port}: {exc.strerror}") from None


def _holder(port: int) -> str:
    """Who listens on `port`, as the end of "in use …": by pid 7 (name) of user bob."""
    from jlservice import listener

    sockets = listener.listening(port)
    return f" by {listener.describe(sockets[0])}" if sockets else ""


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def read_only_notebooks(launch: Launch) -> str | None:
    """Why notebooks cannot be saved when the notebook dir sits on a read-only mount (as
    everything outside ReadWritePaths= does under ProtectSystem=strict), or None."""
    try:
        if not os.statvfs(launch.cwd).f_flag & os.ST_RDONLY:
            return None
    except OSError:
        return None  # a missing dir is reported by the start itself
    return (
        f"notebook_dir {launch.cwd} is on a read-only mount here, so notebooks cannot be saved; "
        f"under systemd, allow it with `systemctl edit <unit>` and ReadWritePaths=-{launch.cwd} "
        "(`jlservice install` does this for the directory it is given)"
    )


def become_subreaper() -> None:
    """Orphaned descendants (kernels of a dead JupyterLab) are re-parented to us, not init."""
    if _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _child_setup(parent_pid: int, cwd: str, errors: int):
    """What the child does after the uid switch, before exec (Popen runs preexec_fn then).

    It enters `cwd` as the lab user: Popen's own cwd= is entered before the switch, with
    root's rights, so a notebook dir the user swapped for a link to someone else's private
    directory would be entered, and readable through /proc/PID/cwd. A failure is reported
    on `errors` as its errno. PDEATHSIG is set here too, as a uid change would clear it.
    """

    def setup() -> None:
        try:
            os.chdir(cwd)
        except OSError as exc:
            os.write(errors, str(exc.errno).encode())
            raise
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the supervisor died before we got here
            os._exit(1)

    return setup


def prepare(launch: Launch, runtime_dir: Path, token: str, cookie_secret: bytes) -> None:
    """What every start needs first, cold or warm: a free address and the secrets in place."""
    _try_bind(launch.ip, launch.port)
    try:
        prepare_private_dir(launch, runtime_dir, token, cookie_secret)
    except OSError as exc:
        raise CannotStartNow(f"cannot prepare {launch.private_dir}: {exc.strerror}") from None


def spawn(launch: Launch) -> subprocess.Popen[bytes]:
    """Start JupyterLab; its stdout and stderr arrive on one pipe."""
    errors, report = os.pipe2(os.O_CLOEXEC)
    try:
        return subprocess.Popen(
            launch.argv,
            env=dict(launch.env),
            cwd="/",
            umask=launch.umask,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup(os.getpid(), launch.cwd, report),
            **identity(launch.account, launch.switch_user),
        )
    except subprocess.SubprocessError:  # raised in _child_setup: entering the notebook dir
        os.close(report)
        report = -1
        raise _cannot_enter(launch, int(os.read(errors, 16) or errno.EIO)) from None
    except PermissionError as exc:
        raise LaunchError(
            f"user {launch.account.name} may not execute {launch.argv[0]}: {exc.strerror}"
        ) from None
    except FileNotFoundError as exc:
        raise LaunchError(
            f"{exc.filename or launch.argv[0]}: no such file; check [lab] command"
        ) from None
    except OSError as exc:  # EAGAIN, ENOMEM…: the machine, not the configuration
        raise CannotStartNow(f"cannot start {launch.argv[0]}: {exc.strerror}") from None
    except ValueError as exc:  # e.g. an embedded NUL that validation let through
        raise LaunchError(f"cannot start {launch.argv[0]}: {exc}") from None
    finally:
        os.close(errors)
        if report >= 0:
            os.close(report)


def _cannot_enter(launch: Launch, code: int) -> Exception:
    why = f"user {launch.account.name} cannot enter notebook_dir {launch.cwd}: {os.strerror(code)}"
    if code in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return LaunchError(f"{why}; give {launch.account.name} access or fix [lab] notebook_dir")
    return CannotStartNow(why)


def identity(account: users.Account, switch_user: bool) -> dict[str, object]:
    """Popen's arguments that make a child run as `account` (none when it is us)."""
    if not switch_user:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}


def detach(popen: subprocess.Popen[bytes]) -> tuple[int, BinaryIO]:
    """JupyterLab's pid and output pipe, which the supervisor owns from now on: its Reaper
    reaps the process, so Popen must never wait on a pid that may be reused."""
    stdout = popen.stdout
    assert stdout is not None
    popen.stdout = None
    popen.returncode = 0
    return popen.pid, stdout
