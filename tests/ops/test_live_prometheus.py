"""A real Prometheus scrapes a real jlservice (two fake NVML GPUs, two real kernels holding
GPU memory) through the shipped scrape job, bearer token and all, and evaluates the shipped
rules: the exposition passes `promtool check metrics`, every query of the Grafana dashboard
returns data, every rule evaluates, a healthy service raises no alert, and JupyterLab stopped
(SIGSTOP) raises JlserviceJupyterLabDown, which resolves once it runs again (SIGCONT)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.metrics import metrics_section, open_notebook, scrape_text, series, wait_scrape
from helpers.procs import stop, wait_for
from helpers.prometheus import DASHBOARD, JOB, RULES, Prometheus, config_for, load_yaml, tool
from nvml.fakenvml import FULL, GIB, Gpu

from jlservice import disk

INTERVAL = 1.0  # the test's Prometheus: scrapes and evaluations every second
SHORT_FOR = "3s"


def dashboard_queries(instance: str) -> list[str]:
    """Every expr of the dashboard, with its variables as Grafana fills them in: the one
    instance (regex-escaped, as Grafana does for a regex matcher) and $__rate_interval at
    four scrape intervals (Grafana's floor)."""
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    rate_interval = f"{int(4 * INTERVAL)}s"
    filled = [
        e.replace("$instance", instance.replace(".", r"\\.")).replace(
            "$__rate_interval", rate_interval
        )
        for e in exprs
    ]
    assert all("$" not in e for e in filled), filled
    return filled


def short_for_rule(directory: Path) -> Path:
    """JlserviceJupyterLabDown exactly as shipped but for `for:` (2 minutes, longer than a
    test should take): the same alert, labelled variant="short-for"."""
    (down,) = (
        rule
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
        if rule.get("alert") == "JlserviceJupyterLabDown"
    )
    down = {**down, "for": SHORT_FOR, "labels": {**down["labels"], "variant": "short-for"}}
    path = directory / "short-for.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "test.short-for", "rules": [down]}]}))
    return path


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[Path], Prometheus]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> Prometheus:
        server = Prometheus(config.parent, config)
        with server.log.open("ab") as log:
            started.append(subprocess.Popen(server.command(), stdout=log, stderr=subprocess.STDOUT))
        server.wait_ready()
        return server

    yield start
    for proc in started:
        stop(proc, 10)


def wait_until(
    prom: Prometheus, what: str, check: Callable[[], Any], detail: Callable[[], Any] = list
) -> Any:
    try:
        return wait_for(check, 30, what, interval=INTERVAL / 2)
    except AssertionError:
        raise AssertionError(
            f"{what}: {detail()}; alerts: {prom.alerts()}; log: {prom.log.read_text()[-2000:]}"
        ) from None


def down_alerts(prom: Prometheus) -> dict[str, str]:
    """JlserviceJupyterLabDown's active alerts: variant ("shipped" or "short-for") → state."""
    return {
        a["labels"].get("variant", "shipped"): a["state"]
        for a in prom.alerts()
        if a["labels"]["alertname"] == "JlserviceJupyterLabDown"
    }


@pytest.mark.alone
def test_prometheus_scrapes_jlservice_and_alerts_on_a_stopped_jupyterlab(
    service_factory, fake_nvml, prometheus, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    token_file = tmp_path / "metrics.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    gpus = [Gpu("GPU-a", **FULL), Gpu("GPU-b", **FULL)]
    fake_nvml.write(gpus)
    # [health] failures: jlservice would replace the stopped JupyterLab after 2 failed
    # probes (its own replacement is tested in integration/test_core.py); here it must stay
    # stopped until the test resumes it, so that the alert, not jlservice, is what is seen.
    svc = service_factory(
        metrics=metrics_section(bearer_token_file=str(token_file)), health={"failures": 100}
    )
    svc.start(env=fake_nvml.env())
    lab_token = svc.state()["token"]
    pids = [open_notebook(svc, lab_token, f"{name}.ipynb")[1] for name in ("train", "eval")]
    gpus[0].processes = [(pids[0], 3 * GIB), (pids[1], GIB)]
    gpus[1].processes = [(pids[1], 2 * GIB)]
    fake_nvml.write(gpus)
    listen = svc.sections["metrics"]["listen"]
    wait_scrape(
        f"http://{listen}/metrics",
        lambda s: len(series(s, "jlservice_kernel_gpu_memory_bytes")) == 3,
        "both notebooks' GPU memory",
        token=token,
    )
    lint = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=scrape_text(f"http://{listen}/metrics", token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert lint.returncode == 0 and not lint.stdout + lint.stderr, lint.stdout + lint.stderr

    directory = tmp_path / "prometheus"
    directory.mkdir()
    config = config_for(directory, listen, token, INTERVAL, [RULES, short_for_rule(directory)])
    prom = prometheus(config)

    queries = dashboard_queries(listen)

    def empty() -> list[str]:
        return [q for q in queries if not prom.query(q)]

    wait_until(prom, "every dashboard query to return a series", lambda: not empty(), empty)
    (up,) = prom.query("jlservice_up")
    assert up["metric"] == {
        "__name__": "jlservice_up",
        "job": JOB,
        "instance": listen,
        "host": "127.0.0.1",  # from the address: the targets file names no host
    }
    assert listen in prom.api("label/instance/values", **{"match[]": "jlservice_up"})

    shipped = [g["name"] for g in load_yaml(RULES)["groups"]]
    groups = {g["name"]: g for g in prom.rule_groups()}
    assert set(groups) == {*shipped, "test.short-for"}
    for group in groups.values():
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
            assert not rule["lastEvaluation"].startswith("0001"), rule
    # A healthy service raises nothing (the machine's own disk may be low, truly).
    low = disk.read_space(svc.notebooks, 5.0).low
    expected = {"JlserviceNotebookDirSpaceLow"} if low else set()
    assert {a["labels"]["alertname"] for a in prom.alerts()} <= expected

    lab_pid = svc.lab_pid
    os.kill(lab_pid, signal.SIGSTOP)
    try:
        wait_until(
            prom,
            "JlserviceJupyterLabDown pending, and firing with a short for",
            lambda: down_alerts(prom) == {"shipped": "pending", "short-for": "firing"},
        )
    finally:
        os.kill(lab_pid, signal.SIGCONT)
    wait_until(prom, "JlserviceJupyterLabDown to resolve", lambda: down_alerts(prom) == {})
    assert svc.lab_pid == lab_pid  # resumed, not replaced
