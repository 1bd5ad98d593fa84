"""The /metrics answer in Prometheus's text format (0.0.4), from two parts:

- what may change at any moment (the supervisor's view, OOM kills, the process's own CPU and
  memory), formatted on each scrape by prometheus_client;
- what changes only once a sampler round (each kernel's series, the GPUs: most of the
  answer, ~10 series per kernel), formatted once in the sampler's thread when the round is
  taken (by a `Renderer`, as generate_latest would, at a fraction of its cost), and
  gzip-compressed there too.

A scrape so costs with 64 kernels about what it does with none (one OOM-kill counter each).
A gzip answer is the two parts' gzip members one after the other, which a gzip reader
(Prometheus's, curl's, Python's) reads as one stream (RFC 1952, 2.2).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.exposition import gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # what generate_latest writes
GZIP_LEVEL = 6  # zlib's default: a tenth of the text, half the time of gzip's 9


@dataclass(frozen=True)
class Rendered:
    """Families formatted once: as text, and as one gzip member."""

    text: bytes = b""
    gzipped: bytes = b""


class Renderer:
    """What generate_latest would write for a round's families (gauges, counters and infos
    without _created samples, as jlservice makes them), with each label set's text kept
    from the round before: escaping every label of every sample is most of
    prometheus_client's cost. Only the label sets of the last round are kept."""

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}

    def render(self, families: Iterable[Metric]) -> Rendered:
        out, before, self._labels = [], self._labels, {}
        for family in families:
            name, kind = family.name, family.type
            if kind == "counter":
                name += "_total"
            elif kind == "info":
                name, kind = name + "_info", "gauge"
            doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
            out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
            for sample in family.samples:
                items = tuple(sample.labels.items())
                labels = before.get(items)
                if labels is None:
                    labels = _labels(items)
                self._labels[items] = labels
                out.append(f"{sample.name}{labels} {floatToGoString(sample.value)}\n")
        text = "".join(out).encode()
        return Rendered(text, gzip.compress(text, GZIP_LEVEL) if text else b"")


def _labels(items: tuple[tuple[str, str], ...]) -> str:
    if not items:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(items))
    return f"{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def app(live: Any, rendered: Callable[[], Rendered]) -> Callable[..., Iterable[bytes]]:
    """The WSGI app: `live` (a registry) formatted now, then the latest round's `rendered()`."""

    def answer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") == "/favicon.ico":
            start_response("200 OK", [])
            return [b""]
        now, part = generate_latest(live), rendered()
        headers = [("Content-Type", CONTENT_TYPE)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            headers.append(("Content-Encoding", "gzip"))
            body = gzip.compress(now, GZIP_LEVEL) + part.gzipped
        else:
            body = now + part.text
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    return answer
