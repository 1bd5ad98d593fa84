"""The exporter as the supervisor sees it: start it, apply new settings on reload, stop it.

A metrics port that is taken never takes JupyterLab down: at start-up the error is logged
once and JupyterLab runs without metrics (a later reload tries again); a reload that moves
`listen` to a taken port is rejected before anything changes (jlservice.reload).
"""

from __future__ import annotations

import errno

from prometheus_client import CollectorRegistry, ProcessCollector

from jlservice import log
from jlservice.config import MetricsConfig
from jlservice.metrics import exposition, server
from jlservice.metrics.collector import Collector, round_families
from jlservice.metrics.sampler import Sampler
from jlservice.metrics.view import SupervisorView

logger = log.get("jlservice.metrics")


class Exporter:
    def __init__(self, view: SupervisorView, settings: MetricsConfig) -> None:
        self.settings = settings
        renderer = exposition.Renderer()
        self.sampler = Sampler(view, settings, lambda s: renderer.render(round_families(s)))
        view.on_ready = self.sampler.wake
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(view, self.sampler))
        ProcessCollector(registry=self.registry)  # the supervisor's own CPU, memory, fds
        # The token of the settings of the moment: a reload changes it without a restart.
        answer = exposition.app(self.registry, lambda: self.sampler.snapshot.rendered)
        self._app = server.guarded(answer, lambda: self.settings.bearer_token)
        self._server: server.Serving | None = None

    def start(self) -> None:
        self.apply(self.settings)

    def apply(self, settings: MetricsConfig) -> None:
        """Take new [metrics] settings; JupyterLab is not touched."""
        moved = settings.listen != self.settings.listen
        self.settings = settings
        if self._server is not None and (moved or not settings.enabled):
            self._stop_server()
        if not settings.enabled:
            self.sampler.stop()
            return
        if not self.sampler.running:
            self.sampler.start()
        self.sampler.update(settings)
        if self._server is None:
            self._serve(settings)

    def stop(self) -> None:
        if self._server is not None:
            self._stop_server()
        self.sampler.stop()

    def _serve(self, settings: MetricsConfig) -> None:
        ip, port = settings.address
        try:
            self._server = server.serve(ip, port, self._app)
        except OSError as exc:
            why = "is in use" if exc.errno == errno.EADDRINUSE else f"failed: {exc.strerror}"
            logger.error(
                "metrics_listen_failed",
                listen=settings.listen,
                problem=f"[metrics] listen: {settings.listen} {why}; JupyterLab runs on "
                "without metrics; free the port or change [metrics] listen, then reload",
            )
            return
        logger.info(
            "metrics_serving",
            url=f"http://{settings.listen}/metrics",
            bearer_token=bool(settings.bearer_token),  # without: every local account reads it
        )

    def _stop_server(self) -> None:
        assert self._server is not None
        serving, self._server = self._server, None
        serving.stop()
