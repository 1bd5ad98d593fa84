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
from helpers.service import render_toml

from jlservice.supervisor.watch import DEBOUNCE_S

from .lab import Lab, event_time, http_ok, need_event
from .report import Metric, say
from .session import BenchError, Session, options, parse, run

RELOAD_GOAL_S = 0.5  # reload median may exceed the cold-start median by this much
DETECT_GOAL_MS = 100.0  # rename -> detected, less the debounce window


def save(lab: Lab, text: str) -> tuple[float, float, int]:
    """Write `text` beside the config file (fsynced) and rename it over it.

    Returns time.time() and time.monotonic() taken just before the rename, and the log's
    size then (later events are this save's).
    """
    tmp = lab.config_path.with_name(f".{lab.config_path.name}.bench.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    offset = lab.log_size()
    wall, mono = time.time(), time.monotonic()
    os.replace(tmp, lab.config_path)
    return wall, mono, offset


def change_port(lab: Lab, avoid: set[int], settle: float) -> dict[str, Any]:
    """Save the config with a new port (none of `avoid`); when each step of the reload
    happened, in seconds from the rename."""
    old = lab.current["lab_pid"]
    port = free_port()
    while port == lab.port or port in avoid:
        port = free_port()
    lab.sections["lab"]["port"] = lab.port = port
    wall, mono, offset = save(lab, render_toml(lab.sections))
    answered = lab.wait_api(f"jlservice run after moving to port {port}")
    lab.current = lab.wait_ready(not_pid=old)
    new = lab.current["lab_pid"]
    lab.wait_event("lab_ready", offset, pid=new)
    events = lab.log_events(offset)
    detected = need_event(events, "config_change_detected")
    reloaded = need_event(events, "config_reloaded", source="file")
    if reloaded.get("result") != "applied":
        raise BenchError(f"a port change was reloaded as {reloaded.get('result')!r}")
    if lab.current.get("port") != port:
        raise BenchError(f"state.json says port {lab.current.get('port')}, not {port}")
    exited = need_event(events, "lab_exited", pid=old)
    starting = need_event(events, "lab_starting", pid=new)
    t = {e["event"]: event_time(e) - wall for e in (detected, reloaded, exited, starting)}
    time.sleep(settle)
    return {
        "port": port,
        "old_pid": old,
        "new_pid": new,
        "api_s": answered - mono,
        "after_s": detected.get("after_s"),
        **{f"{k}_s": v for k, v in t.items()},
    }


def comment_edit(lab: Lab, n: int, settle: float) -> dict[str, Any]:
    """Save the config with only a new comment: reloaded "unchanged", JupyterLab kept."""
    pid = lab.current["lab_pid"]
    restarts = lab.state().get("restarts")
    wall, _, offset = save(lab, f"# comment-only edit {n}\n" + render_toml(lab.sections))
    reloaded = lab.wait_event("config_reloaded", offset)
    time.sleep(settle)  # a restart would begin at once: give it time to show
    events = lab.log_events(offset)
    detected = need_event(events, "config_change_detected")
    now = lab.state()
    stopped = [e for e in events if e.get("event") in ("lab_stopping", "lab_exited")]
    kept = (
        not stopped
        and now.get("lab_pid") == pid
        and now.get("restarts") == restarts
        and pid_alive(pid)
        and http_ok(lab.port)
    )
    if not kept:  # carry on with the new JupyterLab; the table reports the failure
        lab.warn(
            f"comment-only edit {n}: JupyterLab pid {pid} -> {now.get('lab_pid')}, "
            f"result {reloaded.get('result')!r}, events {[e['event'] for e in stopped]}"
        )
        lab.current = lab.wait_ready()
        time.sleep(settle)
    return {
        "pid": pid,
        "result": reloaded.get("result"),
        "kept": kept,
        "detected_s": event_time(detected) - wall,
        "reloaded_s": event_time(reloaded) - wall,
    }


# ── the runs ─────────────────────────────────────────────────────────────────


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
    plain: list[float] = []
    runs: list[dict[str, Any]] = []
    comments: list[dict[str, Any]] = []
    say("warm-up (plain cold start, port change)")
    lab.plain_start(plain_port)
    change_port(lab, {plain_port}, args.settle)
    for i in range(args.runs):
        plain.append(lab.plain_start(plain_port))
        runs.append(r := change_port(lab, {plain_port}, args.settle))
        say(
            f"  run {i + 1}/{args.runs}: plain {plain[-1]:.3f} s, save -> new port "
            f"{r['api_s']:.3f} s (detected {r['config_change_detected_s'] * 1000:.1f} ms, "
            f"reloaded {r['config_reloaded_s'] * 1000:.1f} ms, old lab exited "
            f"{r['lab_exited_s'] * 1000:.1f} ms, new lab spawned "
            f"{r['lab_starting_s'] * 1000:.1f} ms)"
        )
    for i in range(args.runs):
        comments.append(c := comment_edit(lab, i + 1, args.settle))
        kept = "kept" if c["kept"] else "RESTARTED"
        say(
            f"  comment-only edit {i + 1}/{args.runs}: {c['result']} after "
            f"{c['reloaded_s'] * 1000:.1f} ms, JupyterLab {kept}"
        )
    lab.shutdown()
    raw = {"plain_port": plain_port, "plain_s": plain, "port_changes": runs, "comments": comments}
    return metrics(plain, runs, comments), {"debounce_s": DEBOUNCE_S, "runs": raw}


def metrics(
    plain: list[float], runs: list[dict[str, Any]], comments: list[dict[str, Any]]
) -> list[Metric]:
    def ms(key: str, minus: str | None = None) -> list[float]:
        return [(r[key] - (r[minus] if minus else 0.0)) * 1000 for r in runs]

    detect = ms("config_change_detected_s")
    debounce_ms = DEBOUNCE_S * 1000
    first_fs = [d - r["after_s"] * 1000 for d, r in zip(detect, runs, strict=True)]
    base = "plain cold start"
    return [
        Metric("cold start: plain jupyter-lab", "s", plain, note="spawn -> first 200 on /api"),
        Metric(
            "save -> new port /api 200",
            "s",
            [r["api_s"] for r in runs],
            base,
            plain,
            RELOAD_GOAL_S,
            "difference",
            note="one supervisor; rename of the config (new [lab] port) -> first 200 on the "
            "new port; includes the debounce, stopping the old JupyterLab and a cold start",
        ),
        Metric(
            "  lab_starting -> /api 200",
            "s",
            [r["api_s"] - r["lab_starting_s"] for r in runs],
            base,
            plain,
            note="the new JupyterLab's own start (timestamp of lab_starting vs our poller)",
        ),
        Metric(
            "rename -> config_change_detected",
            "ms",
            detect,
            note=f"wall clock, log timestamp; includes the {debounce_ms:g} ms debounce window",
        ),
        Metric(
            "  minus the debounce window",
            "ms",
            [d - debounce_ms for d in detect],
            goal=DETECT_GOAL_MS,
            goal_on="median",
            note=f"detected - {debounce_ms:g} ms (jlservice.watch.DEBOUNCE_S)",
        ),
        Metric(
            "  rename -> first fs event seen",
            "ms",
            first_fs,
            note="detected - after_s (after_s is rounded to 1 ms: +-0.5 ms): inotify, watchdog's "
            "thread, hand-over to the loop; context",
        ),
        Metric(
            "detected -> config_reloaded",
            "ms",
            ms("config_reloaded_s", "config_change_detected_s"),
            note="re-read and validate the file, compare the launch; context",
        ),
        Metric(
            "config_reloaded -> lab_exited",
            "ms",
            ms("lab_exited_s", "config_reloaded_s"),
            note="SIGTERM to the old JupyterLab until its exit is noticed; context",
        ),
        Metric("lab_exited -> lab_starting", "ms", ms("lab_starting_s", "lab_exited_s")),
        Metric(
            "comment edit -> config_reloaded",
            "ms",
            [c["reloaded_s"] * 1000 for c in comments],
            note="results: "
            + ", ".join(sorted({str(c["result"]) for c in comments}))
            + " (expected: unchanged); debounce included",
        ),
        Metric(
            "comment edit: JupyterLab restarted",
            "count",
            [0.0 if c["kept"] and c["result"] == "unchanged" else 1.0 for c in comments],
            goal=0,
            goal_on="max",
            note="1 when the pid changed, it stopped, /api stopped answering or the result "
            "was not 'unchanged'",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__, runs=5)
    args = parse(p, argv, "jlservice", "jupyter-lab", "python")
    return run("bench/reload.py", "jlservice reload benchmark", args, args.runs, measure)


if __name__ == "__main__":
    sys.exit(main())
