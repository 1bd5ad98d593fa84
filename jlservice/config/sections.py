"""The supervisor's own sections: [restart], [kernels], [health], [reload], [log]."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jlservice.config.environments import parse_environments
from jlservice.config.model import (
    HealthConfig,
    KernelsConfig,
    LogConfig,
    ReloadConfig,
    RestartConfig,
)
from jlservice.config.reader import Reader

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
RELOAD_WHEN = ("immediate", "idle")


def parse_restart(r: Reader, t: Mapping[str, Any]) -> RestartConfig:
    d = RestartConfig()
    r.only(t, "restart", set(d.__dataclass_fields__))
    c = RestartConfig(
        initial_delay=r.seconds(t, "restart", "initial_delay", d.initial_delay, minimum=0),
        max_delay=r.seconds(t, "restart", "max_delay", d.max_delay, minimum=0),
        reset_after=r.seconds(t, "restart", "reset_after", d.reset_after, minimum=0),
        max_failures=r.count(t, "restart", "max_failures", d.max_failures),
        max_crashes=r.count(t, "restart", "max_crashes", d.max_crashes),
        start_timeout=r.seconds(t, "restart", "start_timeout", d.start_timeout, minimum=1),
        stop_timeout=r.seconds(t, "restart", "stop_timeout", d.stop_timeout, minimum=0.1),
        warm=r.get(t, "restart", "warm", bool, d.warm),
    )
    if c.max_delay < c.initial_delay:
        r.fail("restart", "max_delay", f"{c.max_delay} is below initial_delay {c.initial_delay}")
    return c


def parse_kernels(r: Reader, t: Mapping[str, Any], home: str) -> KernelsConfig:
    d = KernelsConfig()
    r.only(t, "kernels", set(d.__dataclass_fields__))
    return KernelsConfig(
        survive_restarts=r.get(t, "kernels", "survive_restarts", bool, d.survive_restarts),
        grace=r.seconds(t, "kernels", "grace", d.grace, minimum=0),
        environments=parse_environments(r, t, home),
        memory_max=_size(r, t, "kernels", "memory_max"),
        cull_idle_gpu=r.seconds(t, "kernels", "cull_idle_gpu", d.cull_idle_gpu, minimum=0),
        cull_connected=r.get(t, "kernels", "cull_connected", bool, d.cull_connected),
    )


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
MIN_MEMORY = 64 * 2**20  # less cannot even start a Python kernel


def _size(r: Reader, t: Mapping[str, Any], section: str, key: str) -> int | None:
    """Bytes, as a number or as systemd writes sizes ("512M", "4G": powers of 1024)."""
    value = t.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(float(match[1]) * _UNITS[match[2].lower()])
    else:
        r.fail(section, key, f'{value!r} is not a size (bytes, or like "512M", "4G")')
    if size < MIN_MEMORY:
        r.fail(section, key, f"{value!r} is below {MIN_MEMORY // 2**20}M: no kernel starts in it")
    return size


def parse_health(r: Reader, t: Mapping[str, Any]) -> HealthConfig:
    d = HealthConfig()
    r.only(t, "health", set(d.__dataclass_fields__))
    return HealthConfig(
        interval=r.seconds(t, "health", "interval", d.interval, minimum=0.1),
        timeout=r.seconds(t, "health", "timeout", d.timeout, minimum=0.1),
        failures=r.count(t, "health", "failures", d.failures),
    )


def parse_reload(r: Reader, t: Mapping[str, Any]) -> ReloadConfig:
    d = ReloadConfig()
    r.only(t, "reload", set(d.__dataclass_fields__))
    when = r.get(t, "reload", "when", str, d.when)
    if when not in RELOAD_WHEN:
        r.fail("reload", "when", f"{when!r} is not one of {', '.join(RELOAD_WHEN)}")
    return ReloadConfig(
        watch=r.get(t, "reload", "watch", bool, d.watch),
        when=when,
        max_wait=r.seconds(t, "reload", "max_wait", d.max_wait, minimum=0),
    )


def parse_log(r: Reader, t: Mapping[str, Any]) -> LogConfig:
    r.only(t, "log", {"level", "format"})
    level = r.get(t, "log", "level", str, "info").lower()
    if level not in LOG_LEVELS:
        r.fail("log", "level", f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    fmt = r.get(t, "log", "format", str, "console")
    if fmt not in LOG_FORMATS:
        r.fail("log", "format", f"{fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    return LogConfig(level=level, format=fmt)
