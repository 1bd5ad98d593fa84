"""[metrics]: the Prometheus exporter's switch, address, GPU sampling and its interval."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from jlservice.config.model import LabConfig, MetricsConfig
from jlservice.config.reader import Reader

_WILDCARDS = ("0.0.0.0", "::")


def parse_metrics(r: Reader, t: Mapping[str, Any], lab: LabConfig) -> MetricsConfig:
    d = MetricsConfig()
    r.only(t, "metrics", set(d.__dataclass_fields__))
    listen = r.get(t, "metrics", "listen", str, d.listen)
    ip, port = _split_listen(r, listen)
    same_host = ip == lab.ip or ip in _WILDCARDS or lab.ip in _WILDCARDS
    if port == lab.port and same_host:
        r.fail("metrics", "listen", f"port {port} is JupyterLab's ([lab] port); choose another")
    return MetricsConfig(
        enabled=r.get(t, "metrics", "enabled", bool, d.enabled),
        listen=f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}",
        gpu=r.get(t, "metrics", "gpu", bool, d.gpu),
        interval=r.seconds(t, "metrics", "interval", d.interval, minimum=0.5),
    )


def _split_listen(r: Reader, listen: str) -> tuple[str, int]:
    host, sep, port_text = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    usage = "expected IP:PORT, e.g. 127.0.0.1:9877 or [::1]:9877"
    if not sep or not port_text.isdigit():
        r.fail("metrics", "listen", f"{listen!r}: {usage}")
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        r.fail("metrics", "listen", f"{host!r} is not an IP address; {usage}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        r.fail("metrics", "listen", f"{port} is not a port (1–65535)")
    return ip, port
