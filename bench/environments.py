"""[kernels] environments: what listing 30 environments and activating one cost.

    python -m bench.environments [--runs 10] [--envs 30] [--json PATH]

`GET api/kernelspecs` with --envs conda-style environments vs none (goal: at most 50 ms
more), also just after a new one appeared; one look of JupyterLab's environments thread
while nothing changed; kernel start -> first result, an activated environment vs a plain
kernelspec of the same interpreter (goal: <= 1.2x). How: bench/README.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from helpers import envtrees

from jlservice.inlab import environments

from .lab import Lab
from .report import Metric, say, timed_ms
from .session import BenchError, Session, options, parse, run

LIST_GOAL = "median - baseline <= 50"
START_GOAL = "ratio <= 1.2"
PLAIN = "plain-env-python"
ACTIVATED = "conda-env-env00-py"  # the first environment's kernel


def build(session: Session, count: int) -> tuple[Path, Path]:
    """`count` conda-style environments in work/envs/; (that directory, the first one)."""
    root = session.work / "trees"
    say("pip install ipykernel into a venv (once) ...")
    base = envtrees.pip_env(root / "base")
    envs = root / "envs"
    say(f"{count} conda-style environments ...")
    for i in range(count):
        envtrees.copy_env(base, envs / f"env{i:02d}", conda=True)
    first = envs / "env00"
    envtrees.add_activate_script(first, "x.sh", f'export {envtrees.ACTIVATED}="$CONDA_PREFIX"\n')
    return envs, first


def look_ms(envs: Path, count: int) -> list[float]:
    """`count` looks of the Finder JupyterLab runs, at environments that do not change."""
    finder = environments.Finder([f"{envs}/*"])
    finder.find()  # the first look inspects every environment; later ones only stat()
    return timed_ms(finder.find, count)


def listing_ms(lab: Lab, token: str) -> float:
    began = time.perf_counter()
    response = lab.api("GET", "api/kernelspecs", token)
    took = (time.perf_counter() - began) * 1000
    if response.status_code != 200:
        raise BenchError(f"GET api/kernelspecs: HTTP {response.status_code}")
    return took


def first_result_s(lab: Lab, token: str, name: str) -> float:
    """POST api/kernels → the result of its first cell; then the kernel is shut down."""
    began = time.perf_counter()
    response = lab.api("POST", "api/kernels", token, json={"name": name})
    if response.status_code != 201:
        raise BenchError(f"starting {name}: HTTP {response.status_code} {response.text}")
    kernel_id = response.json()["id"]
    if lab.execute(token, kernel_id, "print(1)").strip() != "1":
        raise BenchError(f"kernel {name} did not print 1")
    took = time.perf_counter() - began
    lab.api("DELETE", f"api/kernels/{kernel_id}", token)
    return took


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    runs, count = session.args.runs, session.args.envs
    envs, first = build(session, count)
    looks = look_ms(envs, runs * 10)
    plain = Lab(session, "plain")
    lab = Lab(session, "envs", kernels={"environments": [f"{envs}/*"]})
    python = str(first / "bin" / "python")  # a plain kernelspec of it: no activation at all
    lab.add_kernelspec(PLAIN, [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"])
    plain.timed_start()
    lab.timed_start()
    plain_token, token = plain.current["token"], lab.current["token"]
    listing_ms(plain, plain_token)  # warm-up
    began = time.perf_counter()  # the first listing inspects every environment
    listed = lab.api("GET", "api/kernelspecs", token).json()["kernelspecs"]
    first_ms = (time.perf_counter() - began) * 1000
    if (found := sum(n.startswith("conda-env-") for n in listed)) != count:
        raise BenchError(f"{found} environment kernels listed, expected {count}")
    say(f"listing, {runs * 10} requests each ...")
    base_ms, envs_ms, changed_ms = [], [], []
    for _ in range(runs * 10):
        base_ms.append(listing_ms(plain, plain_token))
        envs_ms.append(listing_ms(lab, token))
    for i in range(runs):
        (envs / f"new{i}" / "conda-meta").mkdir(parents=True)
        changed_ms.append(listing_ms(lab, token))
    say(f"kernel starts, {runs} each ...")
    first_result_s(lab, token, PLAIN)  # warm-ups: the interpreter's files cached
    first_result_s(lab, token, ACTIVATED)
    plain_s, activated_s = [], []
    for _ in range(runs):
        plain_s.append(first_result_s(lab, token, PLAIN))
        activated_s.append(first_result_s(lab, token, ACTIVATED))
    plain.shutdown()
    lab.shutdown()
    none = ("no [kernels] environments", base_ms)
    note = f"the first listing after JupyterLab started: {first_ms:.0f} ms"
    appeared = f"GET api/kernelspecs just after an environment appeared ({count} + 1)"
    look = f"a look unasked, {count} environments unchanged (every 2 s in JupyterLab)"
    start = "kernel start → first result, activated conda-style env (activate.d script)"
    metrics = [
        Metric(f"GET api/kernelspecs, {count} environments", "ms", envs_ms, LIST_GOAL, note, none),
        Metric(appeared, "ms", changed_ms, LIST_GOAL, vs=none),
        Metric(look, "ms", looks),
        Metric(
            start, "s", activated_s, START_GOAL, vs=("plain kernelspec, same interpreter", plain_s)
        ),
    ]
    return metrics, {}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__, runs=10)
    p.add_argument("--envs", type=int, default=30, help="environments listed (default 30)")
    args = parse(p, argv, "jlservice", "jupyter-lab", "python")
    return run("bench/environments.py", "[kernels] environments benchmark", args, measure)


if __name__ == "__main__":
    sys.exit(main())
