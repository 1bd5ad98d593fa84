"""Live-reload benchmark: a saved configuration file -> JupyterLab answering as configured.

    python -m bench.reload [--runs 5] [--json PATH]

One `jlservice run` for every save (renamed over the file, as editors do): a port change ->
the new port answering, vs a plain cold start; each step of it from the JSON log; a
comment-only edit, which must leave JupyterLab running. How: bench/README.md.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from helpers.procs import free_port, pid_alive
from helpers.service import event_time, render_toml

from jlservice.supervisor.watch import DEBOUNCE_S

from .lab import Lab, http_ok, need_event
from .report import Metric, Runs, minus, say
from .session import BenchError, Session, options, parse, run

GOAL = "median - baseline <= 0.5"  # the reload may take 0.5 s more than a cold start
STEPS = ("config_change_detected", "config_reloaded", "lab_exited", "lab_starting")


def save(lab: Lab, text: str) -> tuple[float, float, int]:
    """Write `text` beside the config file (fsynced) and rename it over it: time.time() and
    time.monotonic() just before the rename, and the log's size then (later events are
    this save's)."""
    tmp = lab.config_path.with_name(f".{lab.config_path.name}.bench.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    offset = lab.log_size()
    wall, mono = time.time(), time.monotonic()
    os.replace(tmp, lab.config_path)
    return wall, mono, offset


def change_port(lab: Lab, avoid: set[int], settle: float) -> dict[str, float]:
    """Save the config with a new port (none of `avoid`): seconds from the rename to the new
    port answering (api_s) and to each of STEPS, and the first fs event's `after_s`."""
    old = lab.current["lab_pid"]
    port = free_port()
    while port == lab.port or port in avoid:
        port = free_port()
    lab.sections["lab"]["port"] = lab.port = port
    wall, mono, offset = save(lab, render_toml(lab.sections))
    answered = lab.wait_api(f"jlservice run after moving to port {port}")
    new = lab.wait_ready(not_pid=old)["lab_pid"]
    lab.wait_event("lab_ready", offset, pid=new)
    events = lab.log_events(offset)
    match = {"config_reloaded": {"source": "file"}, "lab_exited": {"pid": old}}
    match["lab_starting"] = {"pid": new}
    steps = {name: need_event(events, name, **match.get(name, {})) for name in STEPS}
    if (result := steps["config_reloaded"].get("result")) != "applied":
        raise BenchError(f"a port change was reloaded as {result!r}")
    if lab.current.get("port") != port:
        raise BenchError(f"state.json says port {lab.current.get('port')}, not {port}")
    time.sleep(settle)
    times = {name: event_time(event) - wall for name, event in steps.items()}
    return {"api_s": answered - mono, "after_s": steps[STEPS[0]]["after_s"], **times}


def comment_edit(lab: Lab, n: int, settle: float) -> dict[str, Any]:
    """Save the config with only a new comment: reloaded "unchanged", JupyterLab kept."""
    pid, restarts = lab.current["lab_pid"], lab.state().get("restarts")
    wall, _, offset = save(lab, f"# comment-only edit {n}\n" + render_toml(lab.sections))
    reloaded = lab.wait_event("config_reloaded", offset)
    time.sleep(settle)  # a restart would begin at once: give it time to show
    events = lab.log_events(offset)
    now = lab.state()
    stopped = [e["event"] for e in events if e.get("event") in ("lab_stopping", "lab_exited")]
    same = now.get("lab_pid") == pid and now.get("restarts") == restarts
    kept = not stopped and same and pid_alive(pid) and http_ok(lab.port)
    if not kept:  # carry on with the new JupyterLab; the table reports the failure
        lab.warn(
            f"comment-only edit {n}: JupyterLab pid {pid} -> {now.get('lab_pid')}, "
            f"result {reloaded.get('result')!r}, events {stopped}"
        )
        lab.wait_ready()
        time.sleep(settle)
    return {
        "result": reloaded.get("result"),
        "kept": kept and reloaded.get("result") == "unchanged",
        "reloaded_ms": (event_time(reloaded) - wall) * 1000,
    }


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    args = session.args
    # F alone in a directory of its own: the log and JupyterLab's files are written elsewhere.
    # Every start cold: these figures are jlservice's own cost over a plain JupyterLab;
    # bench/warm.py measures warm restarts.
    lab = Lab(session, config_dir="config", restart={"warm": False})
    plain_port = free_port()
    say("starting jlservice run")
    lab.timed_start()
    time.sleep(args.settle)
    say("warm-up (plain cold start, port change)")
    lab.plain_start(plain_port)
    change_port(lab, {plain_port}, args.settle)
    s = Runs("run", args.runs)
    for _ in range(args.runs):
        s.add(plain=lab.plain_start(plain_port), **change_port(lab, {plain_port}, args.settle))
    comments = [comment_edit(lab, i + 1, args.settle) for i in range(args.runs)]
    say(
        "  comment-only edits: "
        + ", ".join(f"{c['result']} {c['reloaded_ms']:.1f} ms" for c in comments)
    )
    lab.shutdown()
    return metrics(s, comments), {"debounce_s": DEBOUNCE_S, "runs": s, "comments": comments}


def metrics(s: Runs, comments: list[dict[str, Any]]) -> list[Metric]:
    """The rows; what each measures: bench/README.md."""

    def ms(key: str, since: str | None = None) -> list[float]:
        return [(a - (s[since][i] if since else 0.0)) * 1000 for i, a in enumerate(s[key])]

    detect, debounce = ms("config_change_detected"), DEBOUNCE_S * 1000
    cold, steps = ("plain cold start", s["plain"]), "debounce, stop, cold start"
    seen = minus(detect, ms("after_s"))
    results = ", ".join(sorted({str(c["result"]) for c in comments}))
    expected = f"results: {results} (expected: unchanged)"
    reloaded = [c["reloaded_ms"] for c in comments]
    restarted = [0.0 if c["kept"] else 1.0 for c in comments]
    why = "its pid changed, it stopped, /api failed or the result was not 'unchanged'"
    return [
        Metric("cold start: plain jupyter-lab", "s", s["plain"], note="spawn -> first 200 on /api"),
        Metric("save -> new port /api 200", "s", s["api_s"], GOAL, steps, cold),
        Metric("  lab_starting -> /api 200", "s", minus(s["api_s"], s["lab_starting"]), vs=cold),
        Metric("rename -> config_change_detected", "ms", detect, note="debounce included"),
        Metric("  minus the debounce window", "ms", [d - debounce for d in detect], "<= 100"),
        Metric("  rename -> first fs event seen", "ms", seen, note="±0.5 ms"),
        Metric("detected -> config_reloaded", "ms", ms("config_reloaded", STEPS[0])),
        Metric("config_reloaded -> lab_exited", "ms", ms("lab_exited", "config_reloaded")),
        Metric("lab_exited -> lab_starting", "ms", ms("lab_starting", "lab_exited")),
        Metric("comment edit -> config_reloaded", "ms", reloaded, note=expected),
        Metric("comment edit: JupyterLab restarted", "count", restarted, "max <= 0", why),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse(options(__doc__, runs=5, settle=True), argv, "jlservice", "jupyter-lab", "python")
    return run("bench/reload.py", "jlservice reload benchmark", args, measure)


if __name__ == "__main__":
    sys.exit(main())
