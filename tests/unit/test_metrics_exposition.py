"""/metrics with many kernels, through the real exporter on a free port: what a sampler round
alone changes is formatted once a round, not on each scrape; the answer is the same with and
without gzip; OOM kills show at once, between rounds."""

from __future__ import annotations

import dataclasses
import gzip
import http.client
from collections.abc import Iterator

import prometheus_client.exposition
import pytest
from helpers.metrics import scrape, series, value
from helpers.procs import free_port
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily

from jlservice.config import MetricsConfig
from jlservice.kernels.cgroups import Cgroup
from jlservice.metrics import exposition
from jlservice.metrics.collector import round_families
from jlservice.metrics.exporter import Exporter
from jlservice.metrics.gpu import GpuSample
from jlservice.metrics.sampler import KernelMemory, Snapshot
from jlservice.metrics.usage import Usage
from jlservice.metrics.view import SupervisorView

KILLS = "jlservice_kernel_oom_kills_total"


def _id(i: int) -> str:
    return f"{i:08x}-6b1d-4c57-9d0e-8a1b2c3d4e5f"


def _notebook(i: int) -> str:
    return f'dir/it\'s "ü" {i}.ipynb'


def _snapshot(kernels: int) -> Snapshot:
    used = tuple(
        Usage(_id(i), _notebook(i), 100 + i, "idle", 3.0, 1, 12.5, 0.1, 100 << 20, 4, 0,
              Cgroup(1 << 30, 4 << 30))
        for i in range(kernels)
    )  # fmt: skip
    gpus = tuple(
        GpuSample(g, f"GPU-{g}", True, (("name", "fake"),), (("memory_used_bytes", (), 1.0),))
        for g in range(8)
    )
    held = tuple(KernelMemory(i % 8, f"GPU-{i % 8}", _id(i), _notebook(i), 1 << 30)
                 for i in range(kernels))  # fmt: skip
    return Snapshot(
        kernel_states={"idle": kernels},
        gpus=gpus,
        kernel_memory=held,
        gpu_enabled=True,
        notebooks=used,
        owners={100 + i: _id(i) for i in range(kernels)},
        kernels=frozenset(_id(i) for i in range(kernels)),
    )


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    # gpu off: the snapshot is set by the test, the sampler thread's own rounds read nothing
    settings = MetricsConfig(listen=f"127.0.0.1:{free_port()}", gpu=False)
    exporter = Exporter(SupervisorView("1.0", "alice", "/"), settings)
    exporter.start()
    yield exporter
    exporter.stop()


def _round(exporter: Exporter, snap: Snapshot) -> None:
    """What the sampler thread does with the round it took."""
    exporter.sampler.stop()
    exporter.sampler.snapshot = exporter.sampler.formatted(snap)


def _url(exporter: Exporter) -> str:
    return f"http://{exporter.settings.listen}/metrics"


def _scrape(exporter: Exporter, encoding: str = "") -> tuple[bytes, dict[str, str]]:
    ip, port = exporter.settings.address
    conn = http.client.HTTPConnection(ip, port, timeout=10)
    conn.request("GET", "/metrics", headers={"Accept-Encoding": encoding} if encoding else {})
    response = conn.getresponse()
    body, headers = response.read(), dict(response.getheaders())
    conn.close()
    assert response.status == 200
    return body, headers


def _samples_formatted(exporter: Exporter, monkeypatch: pytest.MonkeyPatch) -> int:
    """Samples prometheus_client formats for one scrape (one float each)."""
    count = 0
    real = prometheus_client.exposition.floatToGoString

    def counted(d: object) -> str:
        nonlocal count
        count += 1
        return real(d)

    monkeypatch.setattr(prometheus_client.exposition, "floatToGoString", counted)
    _scrape(exporter)
    monkeypatch.setattr(prometheus_client.exposition, "floatToGoString", real)
    return count


def test_a_scrape_formats_at_most_one_series_per_kernel(exporter, monkeypatch) -> None:
    """The ~10 series of each kernel and the GPUs are formatted once a round; a scrape
    formats the supervisor's own series and each kernel's OOM-kill counter (a kill shows at
    once), whatever else the round holds."""
    _round(exporter, _snapshot(1))
    one = _samples_formatted(exporter, monkeypatch)
    _round(exporter, _snapshot(64))
    many = _samples_formatted(exporter, monkeypatch)
    assert one > 0 and many - one <= 63  # (a count of 0 would be the patch not taking)
    scraped = scrape(_url(exporter))  # as requests asks: gzip
    assert len(series(scraped, "jlservice_kernel_resident_memory_bytes")) == 64
    assert len(series(scraped, "jlservice_kernel_gpu_memory_bytes")) == 64


def test_the_same_answer_with_and_without_gzip(exporter) -> None:
    _round(exporter, _snapshot(64))
    plain, headers = _scrape(exporter)
    zipped, zipped_headers = _scrape(exporter, "gzip")
    assert zipped_headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in headers
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert len(zipped) < len(plain) / 4
    unzipped = gzip.decompress(zipped).decode()

    def without_process(text: str) -> list[str]:  # the process's own CPU moved between them
        return [line for line in text.splitlines() if not line.startswith("process_")]

    assert without_process(unzipped) == without_process(plain.decode())
    assert 'notebook="dir/it\'s \\"ü\\" 5.ipynb"' in unzipped  # escaped as before


def test_an_oom_kill_shows_before_the_next_round(exporter) -> None:
    _round(exporter, _snapshot(4))
    labels = {"kernel_id": _id(2), "notebook": _notebook(2)}
    assert value(scrape(_url(exporter)), "jlservice_kernel_oom_kills_total", **labels) == 0
    # The round stays; the supervisor's Publisher counts a kill in the view.
    exporter.sampler.view.oom_kills[_id(2)] = (_notebook(2), 1)
    assert value(scrape(_url(exporter)), "jlservice_kernel_oom_kills_total", **labels) == 1


def test_a_round_is_formatted_as_prometheus_client_formats_it() -> None:
    """jlservice's own formatting of a round (label texts kept across rounds) writes what
    generate_latest writes, with notebook paths that need escaping."""
    snap = _snapshot(3)
    odd = 'back\\slash\nnew line "quoted" ü.ipynb'
    snap = dataclasses.replace(
        snap, notebooks=(dataclasses.replace(snap.notebooks[0], notebook=odd), *snap.notebooks)
    )
    families = list(round_families(snap))
    assert {f.type for f in families} >= {"gauge", "counter", "info"}

    class Registry:
        def collect(self):
            return iter(families)

    expected = generate_latest(Registry())
    renderer = exposition.Renderer()
    for _ in range(2):  # the second time from the kept label texts
        rendered = renderer.render(families)
        assert rendered.text == expected
        assert gzip.decompress(rendered.gzipped) == expected


def test_a_kill_told_before_its_notebook_was_known_takes_the_rounds_notebook(exporter) -> None:
    """A kernel killed in its first seconds, when JupyterLab did not answer which notebook
    it is: its counter carries the notebook once a round knows it."""
    _round(exporter, _snapshot(2))
    exporter.sampler.view.oom_kills[_id(1)] = ("", 1)
    scraped = scrape(_url(exporter))
    assert value(scraped, KILLS, kernel_id=_id(1), notebook=_notebook(1)) == 1
    assert value(scraped, KILLS, kernel_id=_id(1), notebook="") is None


def test_a_renderer_keeps_only_the_last_rounds_label_texts() -> None:
    """A notebook renamed every round (its path in the labels) must not grow what the
    supervisor keeps: only the label sets of the round before are kept."""
    renderer = exposition.Renderer()
    for round_ in range(50):
        family = GaugeMetricFamily("x", "x", labels=["notebook"])
        family.add_metric([f"renamed-{round_}.ipynb"], 1)
        assert f'notebook="renamed-{round_}.ipynb"'.encode() in renderer.render([family]).text
    assert len(renderer._labels) == 1


def test_a_round_that_cannot_be_formatted_still_counts_and_serves_no_old_round(exporter):
    """A formatting bug costs the round's series in the answer, not the round: an older
    round's series served as the current one would hide what runs now."""
    _round(exporter, _snapshot(2))
    assert len(series(scrape(_url(exporter)), "jlservice_kernel_resident_memory_bytes")) == 2
    sampler = exporter.sampler

    def broken(_snapshot: Snapshot) -> exposition.Rendered:
        raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")

    sampler._render = broken
    taken = sampler.formatted(_snapshot(3))
    assert taken.rendered == exposition.Rendered() and len(taken.notebooks) == 3
