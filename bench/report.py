"""What every benchmark prints: its progress, the machine, the result table, and --json."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    """Progress, on stderr: stdout is the report."""
    print(message, file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], p: float) -> float:
    """The sample of rank p % (the nearest rank from the smallest to the largest)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Runs(dict[str, list[float]]):
    """Samples by name, one of each per run; each run's values said on stderr."""

    def __init__(self, what: str, total: int) -> None:
        super().__init__()
        self.what, self.total, self.done = what, total, 0

    def add(self, **values: float) -> None:
        self.done += 1
        for name, value in values.items():
            self.setdefault(name, []).append(value)
        figures = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
        say(f"  {self.what} {self.done}/{self.total}: {figures}")


# ── a row of the table ───────────────────────────────────────────────────────

GOALS = {  # what goal_on bounds, and how the goal reads
    "ratio": "ratio <= {goal:g}",  # median ÷ baseline median
    "median": "<= {goal:g} {unit}",
    "difference": "median - baseline <= {goal:g} {unit}",  # median − baseline median
    "max": "max <= {goal:g} {unit}",  # the largest sample
}


@dataclass
class Metric:
    """One row: samples of jlservice, optionally samples of a baseline, and a goal."""

    name: str
    unit: str
    samples: list[float]
    baseline: str | None = None
    baseline_samples: list[float] = field(default_factory=list)
    goal: float | None = None
    goal_on: str = "ratio"  # one of GOALS
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_samples) if self.baseline_samples else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        return self.median / base if base else None

    @property
    def difference(self) -> float | None:
        base = self.baseline_median
        return None if base is None else self.median - base

    @property
    def ok(self) -> bool | None:
        if self.goal is None:
            return None
        value = {"ratio": self.ratio, "difference": self.difference, "max": max(self.samples)}
        bounded = value.get(self.goal_on, self.median)
        return None if bounded is None else bounded <= self.goal

    def goal_text(self) -> str:
        return (
            "" if self.goal is None else GOALS[self.goal_on].format(goal=self.goal, unit=self.unit)
        )

    def to_dict(self) -> dict[str, Any]:
        figures = ("median", "baseline_median", "ratio", "difference", "ok")
        return {
            **asdict(self),
            **{name: getattr(self, name) for name in figures},
            "goal_text": self.goal_text(),
            "min": min(self.samples),
            "max": max(self.samples),
            "n": len(self.samples),
        }


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "%"):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.1f}" if unit == "MiB" else f"{value:.3f}"


def table(metrics: Sequence[Metric]) -> str:
    header = ["metric", "unit", "n", "median", "min", "max", "baseline median", "ratio", "goal", ""]
    rows = [header]
    for m in metrics:
        base = m.baseline_median
        rows.append(
            [
                m.name,
                m.unit,
                str(len(m.samples)),
                *(_num(v, m.unit) for v in (m.median, min(m.samples), max(m.samples))),
                f"{_num(base, m.unit)} ({m.baseline})" if base is not None else "",
                f"{m.ratio:.3f}" if m.ratio is not None else "",
                m.goal_text(),
                {True: "PASS", False: "FAIL", None: ""}[m.ok],
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        aligned = (
            c.rjust(w) if i in (2, 3, 4, 5, 7) else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(aligned).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths), *map(line, rows[1:])]
    notes = [f"  [{i}] {m.name}: {m.note}" for i, m in enumerate(metrics, 1) if m.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


# ── the machine ──────────────────────────────────────────────────────────────

_VERSIONS = """
import json, sys
from importlib import metadata
out = {"python": f"{sys.version.split()[0]} ({sys.executable})"}
for name in ("jlservice", "jupyterlab", "jupyter_server", "tornado", "structlog", "psutil"):
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def machine(python: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The machine, and the versions the children run with (`python`, `env`)."""
    done = subprocess.run(
        [python, "-c", _VERSIONS], capture_output=True, text=True, env=dict(env), timeout=60
    )
    v = json.loads(done.stdout) if done.returncode == 0 else {}
    cpu = _value("/proc/cpuinfo", ("model name", "Model", "cpu model"), ":")
    cores = f"{os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable"
    system = _value("/etc/os-release", ("PRETTY_NAME=",), "=") or platform.system()
    cache = env.get("PYTHONPYCACHEPREFIX") or "__pycache__"
    return {
        "host": socket.gethostname(),
        "cpu": f"{cpu or platform.processor() or platform.machine()} ({cores})",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os / kernel": f"{system} / Linux {platform.release()}",
        "python": v.get("python"),
        "jlservice": f"{v.get('jlservice')} (commit {_commit()})",
        "jupyterlab": v.get("jupyterlab"),
        "jupyter_server": v.get("jupyter_server"),
        "tornado / structlog / psutil": f"{v.get('tornado')} / {v.get('structlog')} / "
        f"{v.get('psutil')}",
        "bytecode": "PYTHONDONTWRITEBYTECODE=1"
        if env.get("PYTHONDONTWRITEBYTECODE")
        else f"cached ({cache})",
        "load average at start": " ".join(str(round(x, 2)) for x in os.getloadavg()),
        "running as": "root" if os.geteuid() == 0 else str(os.geteuid()),
    }


def _value(path: str, keys: tuple[str, ...], sep: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(keys):
                return line.split(sep, 1)[1].strip().strip('"')
    return None


def _commit() -> str | None:
    """HEAD of the checkout, "+dirty" when jlservice/ has changes (git takes no lock)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    asks = (("rev-parse", "--short", "HEAD"), ("status", "--porcelain", "--", "jlservice"))
    try:
        head, dirty = (
            subprocess.run(
                ["git", "-C", str(REPO), *ask], capture_output=True, text=True, env=env, timeout=10
            )
            for ask in asks
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return None if head.returncode else head.stdout.strip() + ("+dirty" if dirty.stdout else "")


# ── the two ends of a run ────────────────────────────────────────────────────


def announce(title: str, python: str, env: Mapping[str, str], runs: int) -> dict[str, Any]:
    """Print the title, the machine and why this run may not be a measurement."""
    info = machine(python, env)
    width = max(map(len, info))
    print(f"{title}\n\nmachine:", *(f"  {k.ljust(width)}  {v}" for k, v in info.items()), sep="\n")
    if runs < 5:
        print(f"\n  WARNING: --runs {runs} < 5: a smoke run, not a measurement")
    if (load := os.getloadavg()[0]) > 0.5:
        print(f"  WARNING: load average {load:.2f}: machine not quiet", flush=True)
    return info


def finish(
    script: str,
    began: float,
    metrics: Sequence[Metric],
    warnings: Sequence[str],
    args: Any,
    extra: Mapping[str, Any],
) -> int:
    """Print the table and warnings, write --json, and return the exit status (--strict)."""
    print(f"\nresults ({time.time() - began:.0f} s):\n\n{table(metrics)}")
    for warning in warnings:
        print(f"WARNING: {warning}")
    if args.json:
        report = {"benchmark": script, "started_at": began, "args": vars(args), **extra}
        report.update(metrics=[m.to_dict() for m in metrics], warnings=list(warnings))
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {path}")
    for m in metrics:  # a goal on the difference: the table shows no difference
        if m.goal_on == "difference" and m.goal is not None and m.difference is not None:
            ratio = "" if m.ratio is None else f", ratio {m.ratio:.3f}"
            print(
                f"\n{m.name} vs {m.baseline} (medians): {m.difference:+.3f} {m.unit} "
                f"(goal <= +{m.goal:g} {m.unit}){ratio}"
            )
    missed = [m.name for m in metrics if m.ok is False]
    if missed:
        print(f"goals missed: {', '.join(missed)}")
    return 3 if args.strict and missed else 0
