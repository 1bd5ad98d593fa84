"""What the supervisor loop tells the exporter: written by the loop only, read by scrapes.

Plain attributes and fixed-key dicts: each write replaces one value, which a reader in
another thread sees whole (the GIL), so no lock is needed.
"""

from __future__ import annotations

from collections.abc import Callable

from jlservice import state
from jlservice.labapi import Endpoint

RESTART_REASONS = ("crash", "unhealthy", "reload", "rotate")
RELOAD_RESULTS = ("applied", "unchanged", "rejected")


class SupervisorView:
    def __init__(self, version: str, user: str, notebook_dir: str) -> None:
        self.version = version
        self.user = user
        self.notebook_dir = notebook_dir  # of the JupyterLab that runs, or starts next
        self.endpoint: Endpoint | None = None  # None while JupyterLab is not ready
        self.answering: Callable[[], bool] = lambda: False  # its last health probe passed
        self.lab_started_at: float | None = None
        self.ready_duration: float | None = None
        self.restarts = dict.fromkeys(RESTART_REASONS, 0)
        self.reloads = dict.fromkeys(RELOAD_RESULTS, 0)
        self.config_error = False
        self.port_in_use = False  # another program holds JupyterLab's port
        self.state_write_failing = False  # state.json cannot be written now
        self.stuck_processes = 0  # left behind: SIGKILL did not end them
        self.tls_cert_expiry: float | None = None  # Unix time; None without [tls]
        self.warm_parent: state.WarmParent | None = None
        self.kernels_adopted = 0  # kept across a restart and adopted, in all
        self.kernels_lost: dict[str, int] = {}  # kept (or keepable) kernels ended, by reason
        self.oom_kills: dict[str, tuple[str, int]] = {}  # kernel id → (notebook, kills)
        self.oom_kills_total = 0  # of any process of the service
        self.culled = 0  # idle kernels holding GPU memory shut down ([kernels] cull_idle_gpu)
        self.culled_gpu_bytes = 0  # the GPU memory they held
        self.limits: dict[str, object] = {}  # [kernels] memory_max: whether it holds, and why
        self.on_ready: Callable[[], None] = lambda: None  # the sampler: sample the new server

    @property
    def up(self) -> bool:
        return self.endpoint is not None and self.answering()

    def lab_ready(
        self, endpoint: Endpoint, started_at: float, ready_s: float, answering: Callable[[], bool]
    ) -> None:
        self.lab_started_at = started_at
        self.ready_duration = ready_s
        self.answering = answering
        self.endpoint = endpoint
        self.on_ready()

    def lab_down(self) -> None:
        self.endpoint = None

    def restarted(self, reason: str) -> None:
        """`reason`: why JupyterLab is started again (start timeouts count as unhealthy)."""
        key = reason if reason in self.restarts else "unhealthy"
        self.restarts[key] += 1

    def reloaded(self, result: str) -> None:
        self.reloads[result] += 1
