"""`jlservice doctor` on a healthy install: how long the whole check takes.

    /opt/jlsvenv/bin/python bench/doctor.py [--runs 20] [--json PATH]

One `jlservice run` with what a remote install has: a certificate from `jlservice cert` (https)
and a password from `jlservice password`. Then `jlservice doctor --config F` (every check:
configuration, notebook dir, supervisor, port holder, listening address, GET /api, the
token logging in, anonymous access refused, the certificate's dates and names), which must
pass (exit 0), vs `python -c pass` from the same venv as the baseline, in alternating order
after one untimed warm-up of each. Goal: doctor median < 1 s.

Every process started is ended by PID. Exit status 1 when something fails to start or
answer, 3 with --strict when the goal is missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is a directory of scripts, not a package: its helpers are imported from beside it
from _common import BenchError, run_timed, session
from _lab import Lab
from _report import Metric, announce, finish

GOAL_S = 1.0


def prepare(lab: Lab) -> None:
    """A certificate and a password, set the way a user sets them."""
    jlservice = str(lab.bin / "jlservice")
    for argv, stdin in (
        ([jlservice, "cert", "--config", str(lab.config)], None),
        ([jlservice, "password", "--stdin", "--config", str(lab.config)], "bench password\n"),
    ):
        done = subprocess.run(
            argv, env=lab.env, input=stdin, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise BenchError(f"{' '.join(argv[1:2])} failed: {done.stderr.strip()}")


def measure(lab: Lab, runs: int) -> tuple[list[Metric], str]:
    prepare(lab)
    # Not Lab.service_start: its readiness poller speaks http; state.json says when it serves.
    log = lab.new_log("jlservice")
    proc = lab.procs.spawn(
        [str(lab.bin / "jlservice"), "run", "--config", str(lab.config)], lab.env, log
    )
    lab.procs.adopt(lab.wait_state_ready(proc, log)["lab_pid"])
    doctor = [str(lab.bin / "jlservice"), "doctor", "--config", str(lab.config)]
    bare = [str(lab.bin / "python"), "-c", "pass"]
    _, report = run_timed(doctor, lab.env)  # warm-ups; doctor must pass (run_timed raises)
    run_timed(bare, lab.env)
    doctor_s, bare_s = [], []
    for _ in range(runs):
        doctor_s.append(run_timed(doctor, lab.env)[0])
        bare_s.append(run_timed(bare, lab.env)[0])
    lab.service_stop(proc, log)
    metric = Metric(
        "jlservice doctor, healthy https + password install",
        "s",
        doctor_s,
        baseline="python -c pass",
        baseline_samples=bare_s,
        goal=GOAL_S,
        goal_on="median",
        note=f"{len(report.splitlines())} checks, all passed",
    )
    return [metric], report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="doctor runs (default 20)")
    p.add_argument("--start-timeout", type=float, default=180, help="seconds (default 180)")
    p.add_argument("--bin-dir", default=str(Path(sys.executable).parent), help="venv bin/")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--strict", action="store_true", help="exit 3 when the goal is missed")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be positive")
    for tool in ("jlservice", "jupyter-lab", "python"):
        if not (Path(args.bin_dir) / tool).exists():
            p.error(f"{args.bin_dir}/{tool} does not exist; pass --bin-dir (the venv's bin/)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.time()
    with session("bench/doctor.py", args.keep) as (procs, work):
        try:
            lab = Lab(work, procs, Path(args.bin_dir), 0.005, args.start_timeout, True)
            machine = announce(
                "jlservice doctor benchmark", str(lab.bin / "python"), lab.env, args.runs
            )
            results, report = measure(lab, args.runs)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            print(f"\nbench/doctor.py: FAILED: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    print("\nthe doctor's report on that install:\n" + report)
    return finish(
        "bench/doctor.py",
        began,
        results,
        lab.warnings,
        args,
        {"machine": machine, "report": report},
    )


if __name__ == "__main__":
    sys.exit(main())
