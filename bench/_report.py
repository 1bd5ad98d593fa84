"""Reporting for the jlservice benchmarks: metrics, the result table, the machine."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent

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
        if self.goal_on == "ratio":
            return f"ratio <= {self.goal:g}"
        if self.goal_on == "difference":
            return f"median - baseline <= {self.goal:g} {self.unit}"
        if self.goal_on == "max":
            return f"max <= {self.goal:g} {self.unit}"
        return f"<= {self.goal:g} {self.unit}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            median=self.median,
            min=min(self.samples),
            max=max(self.samples),
            n=len(self.samples),
            baseline_median=self.baseline_median,
            ratio=self.ratio,
            difference=self.difference,
            goal_text=self.goal_text(),
            ok=self.ok,
        )
        return data


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms" or unit == "%":
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:.3f}"


def table(metrics: Sequence[Metric]) -> str:
    header = ["metric", "unit", "n", "median", "min", "max", "baseline median", "ratio", "goal", ""]
    rows = []
    for m in metrics:
        ok = {True: "PASS", False: "FAIL", None: ""}[m.ok]
        base = m.baseline_median
        rows.append(
            [
                m.name,
                m.unit,
                str(len(m.samples)),
                _num(m.median, m.unit),
                _num(min(m.samples), m.unit),
                _num(max(m.samples), m.unit),
                f"{_num(base, m.unit)} ({m.baseline})" if base is not None else "",
                f"{m.ratio:.3f}" if m.ratio is not None else "",
                m.goal_text(),
                ok,
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
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "os": _os_name(),
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


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def _git_commit() -> str | None:
    """HEAD of the repository, "+dirty" when jlservice/ has changes (reads only: no lock)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "jlservice"],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe_machine(info: Mapping[str, Any]) -> str:
    rows = [
        ("host", info.get("hostname")),
        (
            "cpu",
            f"{info.get('cpu_model')} ({info.get('cores')} cores, "
            f"{info.get('cores_usable')} usable)",
        ),
        ("memory", f"{info.get('ram_gib')} GiB"),
        ("os / kernel", f"{info.get('os')} / Linux {info.get('kernel')}"),
        ("python", f"{info.get('python')} ({info.get('python_executable')})"),
        ("jlservice", f"{info.get('jlservice')} (commit {info.get('jlservice_commit')})"),
        ("jupyterlab", info.get("jupyterlab")),
        ("jupyter_server", info.get("jupyter_server")),
        (
            "tornado / structlog / psutil",
            f"{info.get('tornado')} / {info.get('structlog')} / {info.get('psutil')}",
        ),
        ("bytecode", info.get("bytecode")),
        ("load average at start", " ".join(str(x) for x in info.get("loadavg_at_start", []))),
        ("running as", info.get("user")),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


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


def announce(title: str, python: str, env: Mapping[str, str], runs: int) -> dict[str, Any]:
    """Print the title, the machine and why this run may not be a measurement."""
    machine = machine_info(python, env)
    print(f"{title}\n\nmachine:\n" + describe_machine(machine), flush=True)
    if runs < 5:
        print(f"\n  WARNING: --runs {runs} < 5: a smoke run, not a measurement")
    if machine["loadavg_at_start"][0] > 0.5:
        print(f"  WARNING: load average {machine['loadavg_at_start'][0]}: machine not quiet")
    return machine
