"""Core jlservice benchmark: start-up, crash recovery, CLI cost and idle cost.

    python -m bench.core [--runs 5] [--idle-seconds 60] [--json PATH]

start -> ready vs plain `jupyter-lab`; kill -9 JupyterLab -> answering again, and what the
supervisor did meanwhile; `jlservice token` vs `jupyter server list` vs `python -c pass`;
the idle supervisor's CPU and memory. How each is measured: bench/README.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import psutil

from .lab import Lab, Started, event_time, first_event, need_event
from .report import Metric, say
from .session import BenchError, Session, options, parse, run, run_timed

PHASES = ("start", "kill", "cli", "idle")
KERNELS = {
    "none": "no kernel running",
    "python3": "a python3 kernel running",
    "stubborn": "a kernel running that ignores its parent's death (as ipykernel < 7)",
}


# ── 1. start -> ready ────────────────────────────────────────────────────────


def measure_start(lab: Lab, runs: int, plain: list[float]) -> list[Metric]:
    """Alternate plain and jlservice cold starts after one untimed warm-up of each.

    Appends the plain samples to `plain` (the crash-recovery baseline).
    """
    say("start -> ready: warm-up (plain, jlservice)")
    lab.plain_start()
    lab.timed_start()
    lab.shutdown()
    starts: list[Started] = []
    for i in range(runs):
        plain.append(lab.plain_start())
        starts.append(started := lab.timed_start())
        lab.shutdown()
        say(
            f"  run {i + 1}/{runs}: plain {plain[-1]:.3f} s, jlservice "
            f"{started.api_s:.3f} s (lab spawned at {started.spawned_s:.3f} s, "
            f"declared ready at {started.declared_s:.3f} s)"
        )
    base = "plain jupyter-lab"
    return [
        Metric("start->ready: plain jupyter-lab", "s", list(plain)),
        Metric("start->ready: jlservice run", "s", [r.api_s for r in starts], base, plain, 1.05),
        Metric(
            "  spawn -> lab_starting (adopted)",
            "s",
            [r.spawned_s for r in starts],
            note="until the supervisor logs lab_starting: it spawns JupyterLab first, "
            "then imports its own machinery and adopts it (context)",
        ),
        Metric(
            "start->declared ready: jlservice run",
            "s",
            [r.declared_s for r in starts],
            base,
            plain,
            note="spawn -> lab_ready event (state.json ready, READY=1); context, no goal",
        ),
    ]


# ── 2. kill -9 JupyterLab -> answering again ─────────────────────────────────


def measure_kill(lab: Lab, args: Any, plain: list[float]) -> list[Metric]:
    """A fresh supervisor per run, so that every kill is a first crash (no backoff)."""
    if not plain:  # the start phase was skipped: measure the baseline here
        say("kill: plain cold starts for the baseline (after a warm-up)")
        lab.plain_start()
        plain.extend(lab.plain_start() for _ in range(args.runs))
    kernel = lab.add_stubborn_kernelspec() if args.kernel == "stubborn" else args.kernel
    back, teardown, noticed, decided, respawn, swept = [], [], [], [], [], []
    for i in range(args.runs):
        current = lab.timed_start().state
        time.sleep(args.settle)
        if args.kernel != "none":
            lab.start_kernel(current["token"], kernel)
            time.sleep(args.settle)
        crash = lab.crash()
        back.append(crash.back_s)
        teardown.append(crash.teardown_ms)
        starting = lab.wait_event("lab_starting", crash.offset, pid=lab.current["lab_pid"])
        events = lab.log_events(crash.offset)
        gone = need_event(events, "lab_exited", pid=crash.old_pid)
        scheduled = need_event(events[events.index(gone) :], "lab_restart_scheduled")
        ended = first_event(events, "leftovers_ended")
        swept.append(ended.get("count", 0) if ended else 0)
        noticed.append((event_time(gone) - crash.wall) * 1000)
        decided.append((event_time(scheduled) - event_time(gone)) * 1000)
        respawn.append((event_time(starting) - event_time(scheduled)) * 1000)
        lab.shutdown()
        say(
            f"  run {i + 1}/{args.runs}: back in {back[-1]:.3f} s, exit {teardown[-1]:.2f} ms, "
            f"noticed {noticed[-1]:.2f} ms, decided {decided[-1]:.2f} ms, respawned "
            f"{respawn[-1]:.2f} ms, swept {swept[-1]}"
        )
    return [
        Metric(
            "kill -9 lab -> /api 200",
            "s",
            back,
            "plain cold start",
            plain,
            1.10,
            note=f"fresh supervisor per run (first crash: no backoff), {KERNELS[args.kernel]}",
        ),
        Metric(
            "kill -9 -> pid gone/zombie (OS)",
            "ms",
            teardown,
            note="when the kernel has torn the process down (polled every 0.2 ms); context",
        ),
        Metric("kill -9 -> lab_exited (noticed)", "ms", noticed),
        Metric(
            "  of which after the OS exit",
            "ms",
            [n - t for n, t in zip(noticed, teardown, strict=True)],
            note="noticed minus OS exit: the supervisor's own share (approximate)",
        ),
        Metric("lab_exited -> restart_scheduled", "ms", decided),
        Metric(
            "noticed + decided",
            "ms",
            [a + b for a, b in zip(noticed, decided, strict=True)],
            goal=10,
            goal_on="median",
            note=f"orphans swept per run: {swept}",
        ),
        Metric("restart_scheduled -> lab_starting", "ms", respawn, note="respawn; context"),
    ]


# ── 3. CLI and 4. idle, on one supervisor ────────────────────────────────────


def measure_cli(lab: Lab, cli_runs: int) -> list[Metric]:
    """The three commands in rotating order; `jupyter server list` sees the running server."""
    env = dict(lab.env, JUPYTER_RUNTIME_DIR=str(lab.root / "run" / "lab" / "runtime"))
    commands = {
        "python -c pass": [str(lab.bin / "python"), "-c", "pass"],
        "jlservice token": [str(lab.bin / "jlservice"), "token", "--config", str(lab.config_path)],
        "jupyter server list": [str(lab.bin / "jupyter"), "server", "list"],
    }
    say("cli: warm-up")
    out = {name: run_timed(argv, env)[1] for name, argv in commands.items()}
    if out["jlservice token"].strip() != lab.current["token"]:
        raise BenchError("`jlservice token` did not print the token of state.json")
    if f":{lab.port}/" not in out["jupyter server list"]:
        raise BenchError(f"`jupyter server list` did not list the server on port {lab.port}")
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for i in range(cli_runs):
        for name in names[i % 3 :] + names[: i % 3]:
            times[name].append(run_timed(commands[name], env)[0])
    say("  " + ", ".join(f"{n} {statistics.median(t):.3f} s" for n, t in times.items()))
    bare, token, listing = (times[n] for n in names)
    return [
        Metric("python -c pass", "s", bare),
        Metric("jupyter server list", "s", listing),
        Metric("jlservice token", "s", token, "server list", listing, 0.1),
        Metric("jlservice token", "s", token, "python -c pass", bare, 2.0),
    ]


def measure_idle(lab: Lab, args: Any) -> list[Metric]:
    """CPU (user+system, psutil) and RSS of the supervisor over consecutive idle windows."""
    seconds, windows = args.idle_seconds, args.idle_windows or args.runs
    say(f"idle: settling {args.idle_settle:g} s, then {windows} x {seconds:g} s")
    time.sleep(args.idle_settle)
    assert lab.proc is not None
    sup, jl = psutil.Process(lab.proc.pid), psutil.Process(lab.current["lab_pid"])
    restarts = lab.state().get("restarts")
    sup_cpu, sup_rss, lab_cpu, lab_rss = [], [], [], []
    for _ in range(windows):
        s0, l0, t0 = _cpu(sup), _cpu(jl), time.monotonic()
        time.sleep(seconds)
        s1, l1, t1 = _cpu(sup), _cpu(jl), time.monotonic()
        sup_cpu.append((s1 - s0) / (t1 - t0) * 100)
        lab_cpu.append((l1 - l0) / (t1 - t0) * 100)
        sup_rss.append(sup.memory_info().rss / 2**20)
        lab_rss.append(jl.memory_info().rss / 2**20)
        say(f"  supervisor {sup_cpu[-1]:.3f} % {sup_rss[-1]:.1f} MiB, lab {lab_cpu[-1]:.3f} %")
    if lab.proc.poll() is not None or lab.state().get("restarts") != restarts:
        raise BenchError("JupyterLab restarted or jlservice exited during the idle windows")
    tick = 100 / os.sysconf("SC_CLK_TCK") / seconds
    note = (
        f"{windows} windows of {seconds:g} s, % of one core (user+system); resolution "
        f"{tick:.3f} % (one clock tick per window)"
    )
    return [
        Metric("idle supervisor CPU", "%", sup_cpu, goal=0.2, goal_on="median", note=note),
        Metric("idle supervisor RSS", "MiB", sup_rss, goal=60, goal_on="median"),
        Metric("idle JupyterLab CPU (context)", "%", lab_cpu),
        Metric("idle JupyterLab RSS (context)", "MiB", lab_rss),
    ]


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


# ── command line ─────────────────────────────────────────────────────────────


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    args = session.args
    phases = args.only or list(PHASES)
    # Every start cold: these figures are jlservice's own cost over a plain JupyterLab;
    # bench/warm.py measures warm restarts. Kernels ended at each crash, as the "kernel
    # swept" rows measure; bench/kernels.py measures kernels that survive.
    lab = Lab(session, restart={"warm": False}, kernels={"survive_restarts": False})
    metrics: list[Metric] = []
    plain: list[float] = []
    if "start" in phases:
        metrics += measure_start(lab, args.runs, plain)
    if "kill" in phases:
        metrics += measure_kill(lab, args, plain)
    if "cli" in phases or "idle" in phases:
        lab.timed_start()
        time.sleep(args.settle)
        if "cli" in phases:
            metrics += measure_cli(lab, args.cli_runs)
        if "idle" in phases:
            metrics += measure_idle(lab, args)
        lab.shutdown()
    return metrics, {}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__, runs=5)
    p.add_argument("--cli-runs", type=int, default=20, help="runs per CLI command (default 20)")
    p.add_argument("--idle-seconds", type=float, default=60, help="idle window (default 60)")
    p.add_argument("--idle-windows", type=int, help="idle windows (default: --runs)")
    p.add_argument("--idle-settle", type=float, default=5, help="wait before idle (default 5 s)")
    p.add_argument("--settle", type=float, default=1.0, help="wait after ready (default 1 s)")
    p.add_argument(
        "--kernel",
        choices=tuple(KERNELS),
        default="none",
        help="kernel running when JupyterLab is killed (default none); stubborn: a `sleep` "
        "that does not exit when JupyterLab dies, like ipykernel < 7 or a kernel's children",
    )
    p.add_argument("--only", action="append", choices=PHASES, help="run only these phases")
    args = parse(p, argv, "jlservice", "jupyter-lab", "jupyter", "python")
    if min(args.cli_runs, args.idle_windows or 1) < 1 or args.idle_seconds <= 0:
        p.error("--runs, --cli-runs, --idle-windows and --idle-seconds must be positive")
    return run("bench/core.py", "jlservice core benchmark", args, args.runs, measure)


if __name__ == "__main__":
    sys.exit(main())
