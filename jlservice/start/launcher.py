"""Build the exact JupyterLab launch (argv, environment, user, files) and start it.

The launch is a frozen value: two launches that compare equal start the same server, which is
how a reload decides whether JupyterLab must restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jlservice import net, oom_score, users
from jlservice.config import Config, OptionValue
from jlservice.start.conda import conda_env, uses_nb_conda_kernels

# Never handed to JupyterLab (nor to any child): systemd's per-service settings, our own,
# and a token or runtime dir of the shell jlservice was started from.
PRIVATE_ENV = {
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JUPYTER_TOKEN",
    "JUPYTER_TOKEN_FILE",
    "JUPYTER_RUNTIME_DIR",
    "JUPYTER_NO_CONFIG",
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
# Files jlservice may hand JupyterLab in its private dir, next to the token; the password
# hash in CONFIG_DIR (below), whose config comes before the user's own.
SERVER_CONFIG, TLS_CERT, TLS_KEY = "config/jupyter_server_config.json", "tls.crt", "tls.key"
# [kernels] survive_restarts: the directory put first on JupyterLab's PYTHONPATH, holding
# only jlservice's modules: the kernel manager that keeps kernels (jlservice.inlab.kernels,
# under this name), the adoption it uses (.adoption) and the server extension that serves
# the listening socket jlservice holds (.listening); the handover jlservice writes (what to
# adopt, whether to keep); the kernels' output FIFO.
INLAB_DIR, KERNELS_MODULE = "python", "jlservice_kernels"
ADOPTION_MODULE, LISTENING_MODULE = "jlservice_adoption", "jlservice_listening"
# [kernels] environments: jlservice's kernelspec manager, in the same directory, with the
# modules it uses (jlservice.inlab.kernelspecs, .environments and .activate).
KERNELSPECS_MODULE = "jlservice_kernelspecs"
# Always: the server extension that registers the events jlservice posts to JupyterLab (a
# kernel's OOM kill, inlab/notices), in the same directory.
NOTICES_MODULE = "jlservice_notices"
# jlservice's server extensions are enabled by EXTENSIONS_CONFIG in a directory put first
# on JupyterLab's JUPYTER_CONFIG_PATH, as `jupyter server extension enable` would: jupyter_
# server merges it with the user's own (the command line would replace a jpserver_extensions
# of the user's Jupyter config). First on that path, its SERVER_CONFIG (the password) takes
# precedence over the user's config, which is read as well. jlservice's labextension, which
# shows the events and has the launcher list a new environment at once, is found through
# JUPYTER_PATH in LABEXTENSIONS' labextensions/ (read in place: the lab user reads
# jlservice's package already, as the doctor runs inlab/ from it).
CONFIG_DIR, EXTENSIONS_CONFIG = "config", "jupyter_server_config.d/jlservice.json"
LABEXTENSIONS = Path(__file__).resolve().parents[1] / "inlab" / "labextension" / "built"
HANDOVER, KERNEL_OUTPUT = "kernels.json", "kernel-output"
LIMITS_SOCKET = "kernels.sock"  # where the kernel manager asks jlservice to place a kernel

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
    keep_kernels: bool = False  # [kernels] survive_restarts
    environments: bool = False  # [kernels] environments: jlservice's kernelspec manager
    # JupyterLab sees only whether it is set (allow_remote_access), so changing the address
    # alone does not restart JupyterLab.
    public_url: str | None = field(default=None, compare=False)

    @property
    def url(self) -> str:
        """The server's address for people: [lab] public_url if set, else this machine's
        name on a wildcard address, else the address."""
        if self.public_url:
            return self.public_url
        host = socket.gethostname() if net.is_wildcard(self.ip) else self.ip
        host = net.bracket(host)
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
        return net.local_url(self.ip, self.port, f"{self.base_url}api", self.scheme)

    @property
    def token_file(self) -> Path:
        return self.private_dir / "token"

    @property
    def cookie_secret_file(self) -> Path:
        return self.private_dir / "cookie_secret"

    @property
    def jupyter_runtime_dir(self) -> Path:
        return self.private_dir / "runtime"

    @property
    def inlab_dir(self) -> Path:
        return self.private_dir / INLAB_DIR

    @property
    def server_extensions(self) -> tuple[str, ...]:
        """jlservice's server extensions this JupyterLab runs, enabled in EXTENSIONS_CONFIG."""
        return (
            *([LISTENING_MODULE] if self.keep_kernels else []),
            *([KERNELSPECS_MODULE] if self.environments else []),
            NOTICES_MODULE,  # always: a kernel may be OOM-killed under any settings
        )

    @property
    def extensions_config(self) -> Path:
        return self.private_dir / CONFIG_DIR / EXTENSIONS_CONFIG

    @property
    def handover_file(self) -> Path:
        return self.private_dir / HANDOVER

    @property
    def kernel_output(self) -> Path:
        return self.private_dir / KERNEL_OUTPUT

    @property
    def limits_socket(self) -> Path:
        return self.private_dir / LIMITS_SOCKET


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
        # File → Shut Down would only restart it: jlservice brings JupyterLab back
        "--ServerApp.quit_button=False",
    ]
    keep_kernels = config.kernels.survive_restarts
    if keep_kernels:
        argv.extend(_keeping_args(private_dir))
    environments = config.kernels.environments
    argv.extend(_environments_args(environments))
    if account.is_root:
        argv.append("--ServerApp.allow_root=True")
    if lab.public_url:  # behind a proxy: the Host is its name (validation demands a login)
        argv.append("--ServerApp.allow_remote_access=True")
    files = _access_files(config)  # the hash goes in a file, never on the command line
    if TLS_CERT in files:
        argv.append(f"--ServerApp.certfile={private_dir / TLS_CERT}")
        argv.append(f"--ServerApp.keyfile={private_dir / TLS_KEY}")
    for key, value in lab.options.items():
        argv.extend(_option_args(key, value))

    if switch_user:
        env = {k: environ[k] for k in _KEPT_ACROSS_USERS if k in environ}
        env.update({k: v for k, v in environ.items() if k.startswith("LC_")})
    else:
        env = {k: v for k, v in environ.items() if k not in PRIVATE_ENV}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    bindir = os.path.dirname(lab.command[0])
    if bindir not in env["PATH"].split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env["PATH"]
    env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, SHELL=account.shell)
    env.update(lab.env)
    if uses_nb_conda_kernels(lab.options):
        env.update(conda_env(lab.command[0], env))
    env["JUPYTER_TOKEN_FILE"] = str(private_dir / "token")
    env["JUPYTER_RUNTIME_DIR"] = str(private_dir / "runtime")
    # jlservice's modules import first (then leave os.environ), its config and data first
    for name, directory in (
        ("PYTHONPATH", private_dir / INLAB_DIR),
        ("JUPYTER_CONFIG_PATH", private_dir / CONFIG_DIR),
        ("JUPYTER_PATH", LABEXTENSIONS),
    ):
        env[name] = os.pathsep.join(
            [str(directory), *filter(None, env.get(name, "").split(os.pathsep))]
        )
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
        keep_kernels=keep_kernels,
        environments=bool(environments),
    )


def _keeping_args(private_dir: Path) -> list[str]:
    """JupyterLab's kernels, kept across its restarts: jlservice's kernel manager, the
    sessions (notebook → kernel) in a database that outlives the server (and the server
    extension that serves the listening socket jlservice holds, start/listening)."""
    manager = "KeepingMappingKernelManager"
    return [
        f"--ServerApp.kernel_manager_class={KERNELS_MODULE}.{manager}",
        f"--{manager}.handover_file={private_dir / HANDOVER}",
        f"--{manager}.kernel_output={private_dir / KERNEL_OUTPUT}",
        f"--{manager}.kernel_oom_score_adj={oom_score.KERNEL}",
        f"--{manager}.limits_socket={private_dir / LIMITS_SOCKET}",
        f"--SessionManager.database_filepath={private_dir / 'runtime' / 'sessions.db'}",
    ]


def _environments_args(patterns: tuple[str, ...]) -> list[str]:
    """Kernels of the environments `patterns` name, from jlservice's kernelspec manager,
    (and a server extension that tells the front end when they change); none without
    (JupyterLab keeps its own manager, lists what it always did)."""
    if not patterns:
        return []
    manager = "EnvironmentKernelSpecManager"
    return [
        f"--ServerApp.kernel_spec_manager_class={KERNELSPECS_MODULE}.{manager}",
        *(f"--{manager}.environments={p}" for p in patterns),
    ]


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


def runtime_dir_mode(launch: Launch) -> int:
    """[service] runtime_dir: another lab user must get through it to its private files."""
    return 0o755 if launch.switch_user else 0o700
