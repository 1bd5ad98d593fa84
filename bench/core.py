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
from helpers.service import event_time

from .lab import Lab, first_event, need_event
from .report import Metric, Runs, cpu_percent, minus, say
from .session import BenchError, Session, options, parse, run, run_timed

PHASES = ("start", "kill", "cli", "idle")
KERNELS = {
    "none": "no kernel running",
    "python3": "a python3 kernel running",
    "stubborn": "a kernel running that ignores its parent's death (as ipykernel < 7)",
}
STUBBORN = "jlservice-bench-stubborn"


def measure_start(lab: Lab, runs: int, plain: list[float]) -> list[Metric]:
    """Alternate plain and jlservice cold starts after one untimed warm-up of each.

    Appends the plain samples to `plain` (the crash-recovery baseline).
    """
    say("start -> ready: warm-up (plain, jlservice)")
    s = Runs("run", runs)
    for i in range(runs + 1):  # the first is an untimed warm-up
        baseline = lab.plain_start()
        started = lab.timed_start()
        lab.shutdown()
        if i:
            s.add(plain=baseline, **started)
    plain += s["plain"]
    vs = ("plain jupyter-lab", plain)
    adopted = (
        "until the supervisor logs lab_starting: it spawns JupyterLab first, then imports its "
        "own machinery and adopts it (context)"
    )
    declared = "spawn -> lab_ready event (state.json ready, READY=1); context, no goal"
    return [
        Metric("start->ready: plain jupyter-lab", "s", plain),
        Metric("start->ready: jlservice run", "s", s["api_s"], "ratio <= 1.05", vs=vs),
        Metric("  spawn -> lab_starting (adopted)", "s", s["spawned_s"], note=adopted),
        Metric("start->declared ready: jlservice run", "s", s["declared_s"], "", declared, vs),
    ]


def measure_kill(lab: Lab, args: Any, plain: list[float]) -> list[Metric]:
    """A fresh supervisor per run, so that every kill is a first crash (no backoff)."""
    if not plain:  # the start phase was skipped: measure the baseline here
        say("kill: plain cold starts for the baseline (after a warm-up)")
        lab.plain_start()
        plain += [lab.plain_start() for _ in range(args.runs)]
    kernel = args.kernel
    if kernel == "stubborn":  # a sleeping Python whose command line names its connection file
        argv = [str(lab.bin / "python"), "-c", "import time; time.sleep(3600)", "{connection_file}"]
        kernel = lab.add_kernelspec(STUBBORN, argv, "none")
    s = Runs("run", args.runs)
    for _ in range(args.runs):
        lab.timed_start()
        time.sleep(args.settle)
        if args.kernel != "none":
            lab.start_kernel(lab.current["token"], kernel)
            time.sleep(args.settle)
        crash = lab.crash()
        starting = lab.wait_event("lab_starting", crash.offset, pid=lab.current["lab_pid"])
        events = lab.log_events(crash.offset)
        gone = need_event(events, "lab_exited", pid=crash.old_pid)
        scheduled = need_event(events[events.index(gone) :], "lab_restart_scheduled")
        lab.shutdown()
        s.add(
            back=crash.back_s,
            teardown=crash.teardown_ms,
            noticed=(event_time(gone) - crash.wall) * 1000,
            decided=(event_time(scheduled) - event_time(gone)) * 1000,
            respawn=(event_time(starting) - event_time(scheduled)) * 1000,
            swept=(first_event(events, "leftovers_ended") or {}).get("count", 0),
        )
    noticed, teardown, decided = s["noticed"], s["teardown"], s["decided"]
    fresh = f"fresh supervisor per run (first crash: no backoff), {KERNELS[args.kernel]}"
    os_exit = "when the kernel has torn the process down (polled every 0.2 ms); context"
    own = "noticed minus OS exit: the supervisor's own share (approximate)"
    swept = f"orphans swept per run: {[int(n) for n in s['swept']]}"
    both = [a + b for a, b in zip(noticed, decided, strict=True)]
    cold = ("plain cold start", plain)
    return [
        Metric("kill -9 lab -> /api 200", "s", s["back"], "ratio <= 1.1", fresh, cold),
        Metric("kill -9 -> pid gone/zombie (OS)", "ms", teardown, note=os_exit),
        Metric("kill -9 -> lab_exited (noticed)", "ms", noticed),
        Metric("  of which after the OS exit", "ms", minus(noticed, teardown), note=own),
        Metric("lab_exited -> restart_scheduled", "ms", decided),
        Metric("noticed + decided", "ms", both, "<= 10", swept),
        Metric("restart_scheduled -> lab_starting", "ms", s["respawn"], note="respawn; context"),
    ]


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
    names = list(commands)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(cli_runs):
        for name in names[i % 3 :] + names[: i % 3]:
            times[name].append(run_timed(commands[name], env)[0])
    say("  " + ", ".join(f"{n} {statistics.median(t):.3f} s" for n, t in times.items()))
    bare, token, listing = times.values()
    return [
        Metric("python -c pass", "s", bare),
        Metric("jupyter server list", "s", listing),
        Metric("jlservice token", "s", token, "ratio <= 0.1", vs=("server list", listing)),
        Metric("jlservice token", "s", token, "ratio <= 2", vs=("python -c pass", bare)),
    ]


def measure_idle(lab: Lab, args: Any) -> list[Metric]:
    """CPU (user+system, psutil) and RSS of the supervisor over consecutive idle windows."""
    seconds, windows = args.idle_seconds, args.idle_windows or args.runs
    say(f"idle: settling {args.idle_settle:g} s, then {windows} x {seconds:g} s")
    time.sleep(args.idle_settle)
    assert lab.proc is not None
    procs = {"supervisor": psutil.Process(lab.proc.pid), "lab": psutil.Process(lab.lab_pid)}
    restarts = lab.state().get("restarts")
    s = Runs("window", windows)
    for _ in range(windows):
        cpu = {f"{k} %": v for k, v in cpu_percent(procs, seconds).items()}
        s.add(**cpu, **{f"{k} MiB": p.memory_info().rss / 2**20 for k, p in procs.items()})
    if lab.proc.poll() is not None or lab.state().get("restarts") != restarts:
        raise BenchError("JupyterLab restarted or jlservice exited during the idle windows")
    tick = 100 / os.sysconf("SC_CLK_TCK") / seconds
    note = (
        f"{windows} windows of {seconds:g} s, % of one core (user+system); resolution "
        f"{tick:.3f} % (one clock tick per window)"
    )
    return [
        Metric("idle supervisor CPU", "%", s["supervisor %"], "<= 0.2", note),
        Metric("idle supervisor RSS", "MiB", s["supervisor MiB"], "<= 60"),
        Metric("idle JupyterLab CPU (context)", "%", s["lab %"]),
        Metric("idle JupyterLab RSS (context)", "MiB", s["lab MiB"]),
    ]


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
    p = options(__doc__, runs=5, settle=True)
    p.add_argument("--cli-runs", type=int, default=20, help="runs per CLI command (default 20)")
    p.add_argument("--idle-seconds", type=float, default=60, help="idle window (default 60)")
    p.add_argument("--idle-windows", type=int, help="idle windows (default: --runs)")
    p.add_argument("--idle-settle", type=float, default=5, help="wait before idle (default 5 s)")
    p.add_argument(
        "--kernel",
        choices=tuple(KERNELS),
        default="none",
        help="kernel running when JupyterLab is killed (default none); stubborn: one that "
        "does not exit when JupyterLab dies, like ipykernel < 7 or a kernel's children",
    )
    p.add_argument("--only", action="append", choices=PHASES, help="run only these phases")
    args = parse(p, argv, "jlservice", "jupyter-lab", "jupyter", "python")
    if min(args.cli_runs, args.idle_windows or 1) < 1 or args.idle_seconds <= 0:
        p.error("--runs, --cli-runs, --idle-windows and --idle-seconds must be positive")
    return run("bench/core.py", "jlservice core benchmark", args, measure)


if __name__ == "__main__":
    sys.exit(main())
