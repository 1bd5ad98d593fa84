"""Live-reload benchmark: a saved configuration file -> JupyterLab answering as configured.

    /opt/jlsvenv/bin/python bench/reload.py [--runs 5] [--json PATH]

One `jlservice run --config F` serves every reload run. Each save writes a new F beside the
old one and renames it over it (os.replace), as editors and configuration tools do:

1. port change -> GET http://127.0.0.1:NEWPORT/api answering 200, from just before the rename,
   vs a plain `jupyter-lab` cold start (spawn -> first 200), alternating with the reload runs
   after an untimed warm-up of each. Goal: median <= cold-start median + 0.5 s.
2. From the JSON log (event timestamps vs time.time() at the rename): rename ->
   config_change_detected, and that minus the debounce window (goal <= 100 ms); then
   detected -> config_reloaded, config_reloaded -> lab_exited, lab_exited -> lab_starting.
3. comment-only edit -> config_reloaded with result "unchanged", JupyterLab's pid unchanged.

Every process started is ended by PID. Exit status 1 when something fails to start or
answer, 3 with --strict when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a directory of scripts, not a package: its helpers are imported from beside it
from _common import (
    BenchError,
    api_ok,
    event_time,
    free_port,
    lab_bench_parser,
    log_events,
    parse_lab_bench,
    session,
    tail,
)
from _lab import Lab, need_event, wait_event
from _report import Metric, announce, finish

from jlservice.supervisor.watch import DEBOUNCE_S

RELOAD_GOAL_S = 0.5  # reload median may exceed the cold-start median by this much
DETECT_GOAL_MS = 100.0  # rename -> detected, less the debounce window


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Service:
    """The one `jlservice run` all reload runs go through, and its config file."""

    def __init__(self, lab: Lab, settle: float) -> None:
        self.lab = lab
        self.settle = settle
        self.saves = 0
        self.avoid: set[int] = set()  # ports that must not be the next one (the baseline's)
        started = lab.service_start()
        self.proc, self.log = started.proc, started.log
        self.state = started.state
        time.sleep(settle)

    def save(self, text: str) -> tuple[float, float, int]:
        """Write `text` beside the config file and rename it over it.

        Returns time.time() and time.monotonic() taken just before the rename, and the log's
        size then (later events are this save's).
        """
        self.saves += 1
        config = self.lab.config
        tmp = config.with_name(f".{config.name}.bench-{self.saves}.tmp")
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        offset = self.log.stat().st_size
        wall, mono = time.time(), time.monotonic()
        os.replace(tmp, config)
        return wall, mono, offset

    def new_port(self) -> int:
        while True:
            port = free_port()
            if port != self.lab.port and port not in self.avoid:
                return port

    def change_port(self) -> dict[str, Any]:
        """Save the config with a new port; times of each step of the reload, one run."""
        lab, old = self.lab, self.state["lab_pid"]
        port = self.new_port()
        wall, mono, offset = self.save(lab.config_text(port=port))
        lab.port = port
        answered = lab.wait_api(self.proc, self.log, f"jlservice run after moving to port {port}")
        self.state = lab.wait_state_ready(self.proc, self.log, not_pid=old)
        new = self.state["lab_pid"]
        lab.procs.adopt(new)
        wait_event(self.log, "lab_ready", offset, pid=new)
        events = log_events(self.log, offset)
        detected = need_event(events, "config_change_detected")
        reloaded = need_event(events, "config_reloaded", source="file")
        if reloaded.get("result") != "applied":
            raise BenchError(f"a port change was reloaded as {reloaded.get('result')!r}")
        if self.state.get("port") != port:
            raise BenchError(f"state.json says port {self.state.get('port')}, not {port}")
        exited = need_event(events, "lab_exited", pid=old)
        starting = need_event(events, "lab_starting", pid=new)
        t = {e["event"]: event_time(e) - wall for e in (detected, reloaded, exited, starting)}
        time.sleep(self.settle)
        return {
            "port": port,
            "old_pid": old,
            "new_pid": new,
            "api_s": answered - mono,
            "after_s": detected.get("after_s"),
            **{f"{k}_s": v for k, v in t.items()},
        }

    def comment_edit(self, n: int) -> dict[str, Any]:
        """Save the config with only a new comment: reloaded "unchanged", JupyterLab kept."""
        lab, pid = self.lab, self.state["lab_pid"]
        restarts = lab.state().get("restarts")
        wall, _, offset = self.save(lab.config_text(comment=f"comment-only edit {n}"))
        reloaded = wait_event(self.log, "config_reloaded", offset)
        time.sleep(self.settle)  # a restart would begin at once: give it time to show
        events = log_events(self.log, offset)
        detected = need_event(events, "config_change_detected")
        now = lab.state()
        stopped = [e for e in events if e["event"] in ("lab_stopping", "lab_exited")]
        kept = (
            not stopped
            and now.get("lab_pid") == pid
            and now.get("restarts") == restarts
            and _alive(pid)
            and api_ok(lab.port)
        )
        if not kept:  # carry on with the new JupyterLab; the table reports the failure
            lab.warnings.append(
                f"comment-only edit {n}: JupyterLab pid {pid} -> {now.get('lab_pid')}, "
                f"result {reloaded.get('result')!r}, events {[e['event'] for e in stopped]}"
            )
            self.state = lab.wait_state_ready(self.proc, self.log)
            lab.procs.adopt(self.state["lab_pid"])
            time.sleep(self.settle)
        return {
            "pid": pid,
            "result": reloaded.get("result"),
            "kept": kept,
            "detected_s": event_time(detected) - wall,
            "reloaded_s": event_time(reloaded) - wall,
        }

    def stop(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"jlservice run exited ({self.proc.returncode}):\n{tail(self.log)}")
        self.lab.service_stop(self.proc, self.log)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ── the runs ─────────────────────────────────────────────────────────────────


def measure(lab: Lab, args: argparse.Namespace) -> tuple[list[Metric], dict[str, Any]]:
    plain_port = free_port()
    say("starting jlservice run")
    service = Service(lab, args.settle)
    service.avoid.add(plain_port)
    plain: list[float] = []
    runs: list[dict[str, Any]] = []
    comments: list[dict[str, Any]] = []
    try:
        say("warm-up (plain cold start, port change)")
        lab.plain_start(plain_port)
        service.change_port()
        for i in range(args.runs):
            plain.append(lab.plain_start(plain_port))
            runs.append(r := service.change_port())
            say(
                f"  run {i + 1}/{args.runs}: plain {plain[-1]:.3f} s, save -> new port "
                f"{r['api_s']:.3f} s (detected {r['config_change_detected_s'] * 1000:.1f} ms, "
                f"reloaded {r['config_reloaded_s'] * 1000:.1f} ms, old lab exited "
                f"{r['lab_exited_s'] * 1000:.1f} ms, new lab spawned "
                f"{r['lab_starting_s'] * 1000:.1f} ms)"
            )
        for i in range(args.runs):
            comments.append(c := service.comment_edit(i + 1))
            kept = "kept" if c["kept"] else "RESTARTED"
            say(
                f"  comment-only edit {i + 1}/{args.runs}: {c['result']} after "
                f"{c['reloaded_s'] * 1000:.1f} ms, JupyterLab {kept}"
            )
    finally:
        if service.proc.poll() is None:
            service.stop()
    raw = {"plain_port": plain_port, "plain_s": plain, "port_changes": runs, "comments": comments}
    return metrics(plain, runs, comments), raw


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


# ── command line ─────────────────────────────────────────────────────────────


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse_lab_bench(lab_bench_parser(__doc__, runs=5), argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.time()
    with session("bench/reload.py", args.keep) as (procs, work):
        try:
            # The logs (work/logs) stay out of the watched dir.
            lab = Lab.from_args(work, procs, args, config_dir=work / "config")
            # Every start cold: these figures are jlservice's own cost over a plain
            # JupyterLab; bench/warm.py measures warm restarts.
            lab.extra_config = "[restart]\nwarm = false\n"
            lab.config.write_text(lab.config_text())
            machine = announce(
                "jlservice reload benchmark", str(lab.bin / "python"), lab.env, args.runs
            )
            results, raw = measure(lab, args)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            print(f"\nbench/reload.py: FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    status = finish(
        "bench/reload.py",
        began,
        results,
        lab.warnings,
        args,
        {"machine": machine, "debounce_s": DEBOUNCE_S, "runs": raw},
    )
    reload_row = results[1]
    print(
        f"\nsave -> new port vs plain cold start (medians): "
        f"{reload_row.difference:+.3f} s (goal <= +{RELOAD_GOAL_S:g} s), "
        f"ratio {reload_row.ratio:.3f}"
    )
    return status


if __name__ == "__main__":
    sys.exit(main())
