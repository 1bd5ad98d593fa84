"""Scrape a jlservice exporter and read the samples with prometheus_client's own parser."""

from __future__ import annotations

import contextlib
import json
import os

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from .procs import free_port, wait_for
from .service import Service

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_section(**values: object) -> dict[str, object]:
    return {"listen": f"127.0.0.1:{free_port()}", **values}


def metrics_url(svc: Service) -> str:
    return f"http://{svc.sections['metrics']['listen']}/metrics"


def scrape_text(url: str, token: str | None = None) -> str:
    """The exposition; `token`: the bearer token of [metrics] bearer_token_file."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(url, headers=headers, timeout=10)
    response.raise_for_status()
    return response.text


def scrape(url: str, token: str | None = None) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(url, token)):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def wait_scrape(
    url: str, predicate, what: str, timeout: float = 30, token: str | None = None
) -> Samples:
    """Scrape until `predicate(samples)` holds; returns those samples."""

    def attempt() -> Samples | None:
        with contextlib.suppress(requests.RequestException):
            samples = scrape(url, token)
            return samples if predicate(samples) else None
        return None

    return wait_for(attempt, timeout, what, interval=0.2)


def next_round(url: str, last: Samples) -> Samples:
    """The samples of the GPU sampler's round after the one `last` shows (every [metrics]
    interval, 5 s): each round times its NVML collection anew. A round that read NVML after
    a change may have asked JupyterLab for its kernels before it: the next one did not."""
    took = value(last, "jlservice_gpu_collect_duration_seconds")
    return wait_scrape(
        url,
        lambda s: value(s, "jlservice_gpu_collect_duration_seconds") not in (None, took),
        "the sampler's next round",
    )


def kernel_pid(svc: Service, kernel_id: str) -> int:
    def find() -> int | None:
        for p in svc.snapshot():
            with contextlib.suppress(psutil.Error):
                if any(f"kernel-{kernel_id}.json" in a for a in p.cmdline()):
                    return p.pid
        return None

    return wait_for(find, 60, f"the process of kernel {kernel_id}")


EMPTY_NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def open_notebook(svc: Service, token: str, path: str) -> tuple[str, int]:
    """Open `path` as a notebook (POST api/sessions): its kernel's id and process."""
    file = svc.notebooks / path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps(EMPTY_NOTEBOOK))
    for made in (file, *file.relative_to(svc.notebooks).parents):  # the lab user's, as saved
        os.chown(svc.notebooks / made, svc.account.uid, svc.account.gid)
    body = {"path": path, "name": file.name, "type": "notebook", "kernel": {"name": "python3"}}
    response = svc.api("POST", "api/sessions", token, json=body)
    response.raise_for_status()
    kernel_id = response.json()["kernel"]["id"]
    return kernel_id, kernel_pid(svc, kernel_id)
