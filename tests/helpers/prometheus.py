"""A real Prometheus server (Debian's /usr/bin/prometheus) and promtool, for tests/ops and
bench/: the shipped scrape configuration turned into one for a test, the server on a free
port of 127.0.0.1, its HTTP API.

The server is a process the caller starts from `Prometheus.command()` (a test with Popen, a
benchmark through its Session) and ends by its Popen; nothing is found or killed by name.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from .procs import free_port, wait_for
from .service import IS_ROOT

ETC = Path(__file__).resolve().parents[2] / "etc"
RULES = ETC / "prometheus" / "jlservice-rules.yml"
SCRAPE = ETC / "prometheus" / "scrape.yml"
TARGETS = ETC / "prometheus" / "jlservice-targets.yml"
DASHBOARD = ETC / "grafana" / "jlservice.json"
JOB = "jlservice"  # the job the shipped rules select


def tool(name: str) -> str:
    """The path of promtool or prometheus. Missing as root (where tests/run.sh installs
    Debian's prometheus package) fails the test; otherwise it is skipped."""
    path = shutil.which(name)
    if path is not None:
        return path
    why = f"{name} is not installed: apt-get install prometheus (tests/run.sh does, as root)"
    if IS_ROOT:
        pytest.fail(why)
    pytest.skip(why)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def config_for(
    directory: Path, target: str, token: str, interval: float, rule_files: list[Path]
) -> Path:
    """The shipped scrape.yml, written into `directory` for one target: its job as shipped
    (authorization, relabeling), found through file_sd instead of the static entry, with
    `token` as the credentials file; scrapes and rule evaluations every `interval` s."""
    config = copy.deepcopy(load_yaml(SCRAPE))
    every = f"{int(interval * 1000)}ms"
    config["global"] = {
        "scrape_interval": every,
        "scrape_timeout": every,
        "evaluation_interval": every,
    }
    config["rule_files"] = [str(p) for p in rule_files]
    (job,) = (j for j in config["scrape_configs"] if j["job_name"] == JOB)
    del job["static_configs"]
    targets = directory / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    (targets / "test.yml").write_text(yaml.safe_dump([{"targets": [target], "labels": {}}]))
    job["file_sd_configs"] = [{"files": [str(targets / "*.yml")]}]
    token_file = directory / "jlservice.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    job["authorization"] = {"credentials_file": str(token_file)}
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus:
    """One Prometheus server with `config`, its storage under `directory`."""

    def __init__(self, directory: Path, config: Path) -> None:
        self.directory = directory
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "prometheus.log"

    def command(self) -> list[str]:
        return [
            tool("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            try:
                return requests.get(f"{self.url}/-/ready", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, timeout, "Prometheus to be ready", interval=0.1)

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/PATH: its `data`."""
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self.api("rules")["groups"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) of every alerting rule."""
        return self.api("alerts")["alerts"]
