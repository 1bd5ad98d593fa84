"""`jlservice doctor`: check the installation, one line per check; exit 0 when all pass."""

from __future__ import annotations

import argparse

from jlservice.cli._client import config_path


def register(sub, common: argparse.ArgumentParser) -> None:
    doctor = sub.add_parser(
        "doctor",
        parents=[common],
        help="check the installation, one line per check",
        description="Check the configuration, the notebook dir, the port, the running "
        "JupyterLab (it answers, the token logs in, login is required off loopback) and the "
        "certificate; one line per check with what to do. The token is masked, so the "
        "output can go into a bug report. Exit status 0 only when every check passes.",
    )
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from jlservice.admin import doctor

    results = doctor.diagnose(config_path(args))
    print(doctor.report(results))
    return 0 if all(r.passed for r in results) else 1
