"""The validated configuration: frozen dataclasses, and the one error type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jlservice import users
from jlservice.config.reader import ConfigError
from jlservice.config.service import ServiceConfig

Scalar = str | int | float | bool
OptionValue = Scalar | tuple[Scalar, ...] | tuple[tuple[str, Scalar], ...]


@dataclass(frozen=True)
class LabConfig:
    user: str
    notebook_dir: Path
    ip: str
    port: int
    base_url: str
    command: tuple[str, ...]
    env: Mapping[str, str]
    options: Mapping[str, OptionValue]
    allow_root: bool
    umask: int
    public_url: str | None = None  # what people type, behind a proxy; base_url included


@dataclass(frozen=True)
class AuthConfig:
    token: bool = True
    password_file: Path | None = None
    password_hash: str | None = field(default=None, repr=False)

    @property
    def login_required(self) -> bool:
        """A token or a password: JupyterLab lets no one in without one."""
        return self.token or self.password_hash is not None


@dataclass(frozen=True)
class TLSConfig:
    certfile: Path | None = None
    keyfile: Path | None = None
    cert_pem: bytes = field(default=b"", repr=False)
    key_pem: bytes = field(default=b"", repr=False)

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


@dataclass(frozen=True)
class RestartConfig:
    initial_delay: float = 0.5
    max_delay: float = 30.0
    reset_after: float = 60.0  # the window of max_crashes
    max_failures: int = 10
    max_crashes: int = 30
    start_timeout: float = 120.0
    stop_timeout: float = 20.0
    warm: bool = True


@dataclass(frozen=True)
class KernelsConfig:
    survive_restarts: bool = True  # kernels outlive a JupyterLab restart and are adopted
    grace: float = 30.0  # seconds a kept kernel may wait for the next JupyterLab to adopt it
    # Paths and globs of conda environments and venvs whose kernels JupyterLab offers,
    # activated; `~` already the lab user's home. Empty: JupyterLab's own kernelspecs only.
    environments: tuple[str, ...] = ()
    memory_max: int | None = None  # bytes for each kernel and all it starts (its cgroup)
    # Shut down kernels idle this long while they hold GPU memory (0: never).
    cull_idle_gpu: float = 0.0
    cull_connected: bool = False  # also those a tab is connected to


@dataclass(frozen=True)
class HealthConfig:
    # A hang is acted on within interval + 2 × timeout (16 s): well inside WatchdogSec=30.
    interval: float = 5.0
    timeout: float = 3.0
    failures: int = 2


@dataclass(frozen=True)
class ReloadConfig:
    watch: bool = True
    when: str = "immediate"
    max_wait: float = 300.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "console"


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = True
    listen: str = "127.0.0.1:9877"  # HOST:PORT, HOST an IP address ([…] for IPv6)
    gpu: bool = True
    interval: float = 5.0
    notebook_labels: bool = True  # false: GPU memory per kernel id, no notebook path
    bearer_token_file: Path | None = None
    bearer_token: str = field(default="", repr=False)  # read from bearer_token_file

    @property
    def address(self) -> tuple[str, int]:
        """(ip, port) of `listen`, which validation has checked."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Config:
    path: Path | None
    lab: LabConfig
    service: ServiceConfig
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    restart: RestartConfig = field(default_factory=RestartConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    reload: ReloadConfig = field(default_factory=ReloadConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    digest: str | None = None  # sha256 of the file's bytes this configuration was read from

    @property
    def account(self) -> users.Account:
        account = users.lookup(self.lab.user)
        if account is None:  # the user was deleted after validation
            raise ConfigError(f"[lab] user: no such user {self.lab.user!r}")
        return account
