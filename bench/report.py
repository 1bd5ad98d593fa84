"""What every benchmark prints: its progress, the machine, the result table, and --json."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
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


def timed_ms(call: Callable[[], object], times: int) -> list[float]:
    """Milliseconds each of `times` calls of `call` took."""
    samples = []
    for _ in range(times):
        began = time.perf_counter()
        call()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def cpu_percent(procs: Mapping[str, psutil.Process], seconds: float) -> dict[str, float]:
    """% of one core (user + system) each process used over a window of `seconds`."""
    before, began = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}, time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - began
    return {k: (sum(p.cpu_times()[:2]) - before[k]) / wall * 100 for k, p in procs.items()}


def minus(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """a - b, sample by sample."""
    return [x - y for x, y in zip(a, b, strict=True)]


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


@dataclass
class Metric:
    """One row: jlservice's samples, a goal, a note, and a baseline (`vs`: its name and
    samples). `goal` bounds, by what it starts with: "ratio <= X" the median ÷ the
    baseline's median, "median - baseline <= X" their difference, "max <= X" the largest
    sample, "<= X" the median."""

    name: str
    unit: str
    samples: list[float]
    goal: str = ""
    note: str = ""
    vs: tuple[str, list[float]] | None = None

    def figures(self) -> dict[str, Any]:
        median, base = statistics.median(self.samples), None
        if self.vs and self.vs[1]:
            base = statistics.median(self.vs[1])
        f = {"median": median, "min": min(self.samples), "max": max(self.samples)}
        f.update(n=len(self.samples), baseline_median=base, ratio=median / base if base else None)
        f["difference"] = None if base is None else median - base
        on, _, bound = self.goal.partition("<=")
        limited = {"ratio": f["ratio"], "median - baseline": f["difference"], "max": f["max"]}
        value = limited.get(on.strip(), median)
        f["ok"] = None if not self.goal or value is None else value <= float(bound)
        return f

    def goal_text(self) -> str:
        plain = not self.goal or self.goal.startswith("ratio")
        return self.goal if plain else f"{self.goal} {self.unit}"


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
        f = m.figures()
        figures = [_num(f[k], m.unit) for k in ("median", "min", "max")]
        base = f"{_num(f['baseline_median'], m.unit)} ({m.vs[0]})" if m.vs and m.vs[1] else ""
        ratio = f"{f['ratio']:.3f}" if f["ratio"] is not None else ""
        ok = {True: "PASS", False: "FAIL", None: ""}[f["ok"]]
        rows.append([m.name, m.unit, str(f["n"]), *figures, base, ratio, m.goal_text(), ok])
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
    cores = f"{os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable"
    try:
        system = platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError):
        system = platform.system()
    cache = env.get("PYTHONPYCACHEPREFIX") or "__pycache__"
    bytecode = "PYTHONDONTWRITEBYTECODE=1" if env.get("PYTHONDONTWRITEBYTECODE") else ""
    return {
        "host": socket.gethostname(),
        "cpu": f"{_cpu()} ({cores})",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os / kernel": f"{system} / Linux {platform.release()}",
        "python": v.get("python"),
        "jlservice": f"{v.get('jlservice')} (commit {_commit()})",
        "jupyterlab": v.get("jupyterlab"),
        "jupyter_server": v.get("jupyter_server"),
        "tornado / structlog / psutil": " / ".join(
            str(v.get(k)) for k in ("tornado", "structlog", "psutil")
        ),
        "bytecode": bytecode or f"cached ({cache})",
        "load average at start": " ".join(str(round(x, 2)) for x in os.getloadavg()),
        "running as": "root" if os.geteuid() == 0 else str(os.geteuid()),
    }


def _cpu() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(("model name", "Model")))
    return next(names, None) or platform.processor() or platform.machine()


def _commit() -> str | None:
    """HEAD of the checkout, "+dirty" when jlservice/ has changes (git takes no lock)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    asks = (("rev-parse", "--short", "HEAD"), ("status", "--porcelain", "--", "jlservice"))
    try:
        head, dirty = (
            subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, env=env)
            for a in asks
        )
    except OSError:
        return None
    return None if head.returncode else head.stdout.strip() + ("+dirty" if dirty.stdout else "")


def announce(title: str, info: Mapping[str, Any], runs: int) -> None:
    """Print the title, the machine and why this run may not be a measurement."""
    width = max(map(len, info))
    print(f"{title}\n\nmachine:", *(f"  {k.ljust(width)}  {v}" for k, v in info.items()), sep="\n")
    if runs < 5:
        print(f"\n  WARNING: --runs {runs} < 5: a smoke run, not a measurement")
    if (load := os.getloadavg()[0]) > 0.5:
        print(f"  WARNING: load average {load:.2f}: machine not quiet", flush=True)


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
        rows = [{**asdict(m), **m.figures(), "goal_text": m.goal_text()} for m in metrics]
        report = {"benchmark": script, "started_at": began, "args": vars(args), **extra}
        report.update(metrics=rows, warnings=list(warnings))
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nwrote {path}")
    for m in metrics:  # a goal on the difference: the table shows no difference
        f = m.figures()
        if m.goal.startswith("median - baseline") and f["difference"] is not None:
            ratio = "" if f["ratio"] is None else f", ratio {f['ratio']:.3f}"
            print(
                f"\n{m.name} vs {m.vs[0]} (medians): {f['difference']:+.3f} {m.unit} "
                f"(goal <= +{m.goal.partition('<=')[2].strip()} {m.unit}){ratio}"
            )
    missed = [m.name for m in metrics if m.figures()["ok"] is False]
    if missed:
        print(f"goals missed: {', '.join(missed)}")
    return 3 if args.strict and missed else 0
