"""One benchmark run: its options, its work directory, the processes it starts, its ending.

Every process started is recorded (by its Popen, or by pid and start time) and ended on exit,
on a failure, on Ctrl-C and on SIGTERM/SIGHUP; nothing is killed by name.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from helpers.procs import child_env, stop

from .report import Metric, announce, finish, machine


class BenchError(Exception):
    """Something the benchmark needs did not start or did not answer; str() says what."""


def options(
    doc: str, runs: int | None = None, lab: bool = True, settle: bool = False
) -> argparse.ArgumentParser:
    """The options every benchmark has; `lab`: also those of one that starts JupyterLab;
    `settle`: --settle, the wait after each start or restart."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add = p.add_argument
    if runs is not None:
        add("--runs", type=int, default=runs, help=f"runs per figure (default {runs})")
    if lab:
        add("--poll-ms", type=float, default=5, help="/api poll interval (default 5)")
        add("--start-timeout", type=float, default=180, help="seconds (default 180)")
        add(
            "--bytecode",
            choices=("cached", "env"),
            default="cached",
            help="cached (default): children compile .pyc once into a private cache and then "
            "read it, as an installed package would; env: leave PYTHONDONTWRITEBYTECODE as it is",
        )
    else:
        p.set_defaults(bytecode="env")
    if settle:
        add("--settle", type=float, default=1.0, help="wait after each start (default 1 s)")
    add("--bin-dir", default=str(Path(sys.executable).parent), help="venv bin/")
    add("--json", metavar="PATH", help="also write the results as JSON")
    add("--keep", action="store_true", help="keep the work directory (logs)")
    add("--strict", action="store_true", help="exit 3 when a goal is missed")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None, *tools: str) -> argparse.Namespace:
    """The options, checked; `tools`: the programs of the venv the benchmark runs."""
    args = p.parse_args(argv)
    if getattr(args, "runs", 1) < 1:
        p.error("--runs must be positive")
    if not 0 < getattr(args, "poll_ms", 1) <= 10:
        p.error("--poll-ms must be above 0 and at most 10")
    for tool in tools:
        if not (Path(args.bin_dir) / tool).exists():
            p.error(f"{args.bin_dir}/{tool} does not exist; pass --bin-dir (the venv's bin/)")
    return args


class Session:
    """The work directory, the children's environment and everything started in one run."""

    def __init__(self, script: str, args: argparse.Namespace) -> None:
        self.script, self.args = script, args
        self.bin = Path(args.bin_dir)
        self.work = Path(tempfile.mkdtemp(prefix=f"jlservice-bench-{Path(script).stem}-"))
        self.env = child_env()
        if args.bytecode == "cached":  # as an installed package: compiled once, then read
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(self.work / "pycache")
        self.labs: list[Any] = []  # helpers.service.Service, each ended by its cleanup()
        self.popens: list[subprocess.Popen[bytes]] = []
        self.warnings: list[str] = []

    def spawn(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None):
        """Start `argv` in a session of its own (Ctrl-C reaches us only), output to `log`."""
        with log.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    env=dict(self.env if env is None else env),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise BenchError(f"cannot start {argv[0]}: {exc.strerror}") from None
        self.popens.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.popens:
            stop(proc, 30)
        if left := [pid for lab in self.labs for pid in lab.cleanup()]:
            print(f"{self.script}: had to kill leftover pids {left}", file=sys.stderr)
        if self.args.keep:
            print(f"work directory (logs): {self.work}", file=sys.stderr)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


Measure = Callable[[Session], tuple[list[Metric], dict[str, Any]]]


def run(
    script: str, title: str, args: argparse.Namespace, measure: Measure, runs: int | None = None
) -> int:
    """Announce the machine, `measure`, clean up, print the table: the exit status.

    1 when something failed to start or answer, 130 on Ctrl-C, 3 with --strict when a goal
    is missed. `measure` returns the rows and what else goes into --json; `runs` (default
    --runs) below 5 is said to be a smoke run.
    """
    began = time.time()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # runs the clean-up below
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    session = Session(script, args)
    try:
        info = machine(str(session.bin / "python"), session.env)
        announce(title, info, args.runs if runs is None else runs)
        metrics, extra = measure(session)
    except (BenchError, AssertionError, subprocess.TimeoutExpired) as exc:
        print(f"\n{script}: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{script}: interrupted", file=sys.stderr)
        return 130
    finally:
        session.close()
    return finish(script, began, metrics, session.warnings, args, {"machine": info, **extra})


def run_timed(argv: Sequence[str], env: Mapping[str, str]) -> tuple[float, str]:
    """Wall seconds of one run of `argv` to its exit, and its stdout. Raises if it fails."""
    start = time.monotonic()
    done = subprocess.run(list(argv), env=dict(env), capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - start
    if done.returncode != 0:
        output = (done.stderr or done.stdout)[-500:]
        raise BenchError(f"{' '.join(argv)} exited with {done.returncode}: {output}")
    return wall, done.stdout
