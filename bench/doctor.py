"""`jlservice doctor` on a healthy install: how long the whole check takes.

    python -m bench.doctor [--runs 20] [--json PATH]

https (`jlservice cert`) and a password (`jlservice password`), as a remote install has;
`jlservice doctor` vs `python -c pass`. Goal: doctor median < 1 s. How: bench/README.md.
"""

from __future__ import annotations

import sys
from typing import Any

from .lab import Lab
from .report import Metric
from .session import BenchError, Session, options, parse, run, run_timed


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    lab = Lab(session)
    # A certificate and a password, set the way a user sets them.
    for args, stdin in ((["cert"], None), (["password", "--stdin"], "bench password\n")):
        done = lab.cli(*args, input=stdin)
        if done.returncode != 0:
            raise BenchError(f"{args[0]} failed: {done.stderr.strip()}")
    lab.start()  # not timed_start: its /api poller speaks http; state.json says when it serves
    doctor = [*lab.command, "doctor", "--config", str(lab.config_path)]
    bare = [str(lab.bin / "python"), "-c", "pass"]
    _, report = run_timed(doctor, lab.env)  # warm-ups; doctor must pass (run_timed raises)
    run_timed(bare, lab.env)
    doctor_s, bare_s = [], []
    for _ in range(session.args.runs):
        doctor_s.append(run_timed(doctor, lab.env)[0])
        bare_s.append(run_timed(bare, lab.env)[0])
    lab.shutdown()
    print("\nthe doctor's report on that install:\n" + report)
    name = "jlservice doctor, healthy https + password install"
    note = f"{len(report.splitlines())} checks, all passed"
    metric = Metric(name, "s", doctor_s, "<= 1", note, ("python -c pass", bare_s))
    return [metric], {"report": report}


def main(argv: list[str] | None = None) -> int:
    args = parse(options(__doc__, runs=20), argv, "jlservice", "jupyter-lab", "python")
    return run("bench/doctor.py", "jlservice doctor benchmark", args, measure)


if __name__ == "__main__":
    sys.exit(main())
