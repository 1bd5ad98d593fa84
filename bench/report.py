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


# ── statistics and the table ─────────────────────────────────────────────────


@dataclass
class Metric:
    """One row: samples of jlservice, optionally samples of a baseline, and a goal.

    goal_on says what the goal bounds: "ratio" (median ÷ baseline median), "median",
    "difference" (median − baseline median, in `unit`) or "max" (the largest sample).
    """

    name: str
    unit: str
    samples: list[float]
    baseline: str | None = None
    baseline_samples: list[float] = field(default_factory=list)
    goal: float | None = None
    goal_on: str = "ratio"
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
        value = {
            "ratio": self.ratio,
            "difference": self.difference,
            "max": max(self.samples),
        }.get(self.goal_on, self.median)
        return None if value is None else value <= self.goal

    def goal_text(self) -> str:
        if self.goal is None:
            return ""
        return {
            "ratio": f"ratio <= {self.goal:g}",
            "difference": f"median - baseline <= {self.goal:g} {self.unit}",
            "max": f"max <= {self.goal:g} {self.unit}",
        }.get(self.goal_on, f"<= {self.goal:g} {self.unit}")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "median": self.median,
            "min": min(self.samples),
            "max": max(self.samples),
            "n": len(self.samples),
            "baseline_median": self.baseline_median,
            "ratio": self.ratio,
            "difference": self.difference,
            "goal_text": self.goal_text(),
            "ok": self.ok,
        }


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "%"):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.1f}" if unit == "MiB" else f"{value:.3f}"


def table(metrics: Sequence[Metric]) -> str:
    header = ["metric", "unit", "n", "median", "min", "max", "baseline median", "ratio", "goal", ""]
    rows = []
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
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3, 4, 5, 7}

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    notes = [f"  [{i}] {m.name}: {m.note}" for i, m in enumerate(metrics, 1) if m.note]
    text = "\n".join([line(header), rule, *(line(r) for r in rows)])
    return text + ("\n\nnotes:\n" + "\n".join(notes) if notes else "")


# ── the machine ──────────────────────────────────────────────────────────────

_VERSIONS = """
import json, sys
from importlib import metadata
out = {"python": sys.version.split()[0], "python_executable": sys.executable}
for name in ("jlservice", "jupyterlab", "jupyter_server", "tornado", "structlog", "psutil"):
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def machine_info(python: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The machine, and the versions the children run with (`python`, `env`)."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu_model": _first_value("/proc/cpuinfo", ("model name", "Model", "cpu model"), ":")
        or platform.processor()
        or platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": _first_value("/etc/os-release", ("PRETTY_NAME=",), "=") or platform.system(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "user": "root" if os.geteuid() == 0 else str(os.geteuid()),
        "bytecode": "PYTHONDONTWRITEBYTECODE=1"
        if env.get("PYTHONDONTWRITEBYTECODE")
        else f"cached ({env.get('PYTHONPYCACHEPREFIX') or '__pycache__'})",
    }
    done = subprocess.run(
        [python, "-c", _VERSIONS], capture_output=True, text=True, env=dict(env), timeout=60
    )
    if done.returncode == 0:
        info.update(json.loads(done.stdout))
    info["jlservice_commit"] = _git_commit()
    return info


def _first_value(path: str, keys: tuple[str, ...], sep: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(keys):
                return line.split(sep, 1)[1].strip().strip('"')
    return None


def _git(*args: str) -> str | None:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # reads only: takes no lock
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, env=env, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_commit() -> str | None:
    """HEAD of the repository, "+dirty" when jlservice/ has changes."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None:
        return None
    return head + ("+dirty" if _git("status", "--porcelain", "--", "jlservice") else "")


def describe_machine(info: Mapping[str, Any]) -> str:
    get = info.get
    rows = [
        ("host", get("hostname")),
        ("cpu", f"{get('cpu_model')} ({get('cores')} cores, {get('cores_usable')} usable)"),
        ("memory", f"{get('ram_gib')} GiB"),
        ("os / kernel", f"{get('os')} / Linux {get('kernel')}"),
        ("python", f"{get('python')} ({get('python_executable')})"),
        ("jlservice", f"{get('jlservice')} (commit {get('jlservice_commit')})"),
        ("jupyterlab", get("jupyterlab")),
        ("jupyter_server", get("jupyter_server")),
        (
            "tornado / structlog / psutil",
            f"{get('tornado')} / {get('structlog')} / {get('psutil')}",
        ),
        ("bytecode", get("bytecode")),
        ("load average at start", " ".join(str(x) for x in get("loadavg_at_start", []))),
        ("running as", get("user")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


# ── the two ends of a run ────────────────────────────────────────────────────


def announce(title: str, python: str, env: Mapping[str, str], runs: int) -> dict[str, Any]:
    """Print the title, the machine and why this run may not be a measurement."""
    machine = machine_info(python, env)
    print(f"{title}\n\nmachine:\n" + describe_machine(machine), flush=True)
    if runs < 5:
        print(f"\n  WARNING: --runs {runs} < 5: a smoke run, not a measurement")
    if machine["loadavg_at_start"][0] > 0.5:
        print(f"  WARNING: load average {machine['loadavg_at_start'][0]}: machine not quiet")
    return machine


def finish(
    script: str,
    began: float,
    metrics: Sequence[Metric],
    warnings: Sequence[str],
    args: Any,
    extra: Mapping[str, Any],
) -> int:
    """Print the table and warnings, write --json, and return the exit status (--strict)."""
    print(f"\nresults ({time.time() - began:.0f} s):\n")
    print(table(metrics))
    for warning in warnings:
        print(f"WARNING: {warning}")
    if args.json:
        report = {
            "benchmark": script,
            "started_at": began,
            "args": vars(args),
            **extra,
            "metrics": [m.to_dict() for m in metrics],
            "warnings": list(warnings),
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {path}")
    missed = [m.name for m in metrics if m.ok is False]
    if missed:
        print(f"goals missed: {', '.join(missed)}")
    return 3 if args.strict and missed else 0
