"""[kernels] environments: what listing 30 environments and activating one cost.

    python -m bench.environments [--runs 10] [--envs 30] [--json PATH]

- listing: `GET api/kernelspecs` of a JupyterLab with --envs conda-style environments
  (each a real prefix: `venv --copies`, ipykernel, conda-meta/) vs one without
  `environments`, run side by side, requests alternating; and the first listing after a
  new environment appeared (the one directory that changed is looked at again). Goal: at
  most 50 ms more.
- a look unasked: what JupyterLab's environments thread pays every 2 s (so that the
  launcher shows a new environment at once) while nothing changed: one Finder.find() of
  the same --envs environments, in this process.
- kernel start: POST api/kernels → the first cell's result, for the environment's kernel
  (activated: PATH, CONDA_PREFIX, an activate.d script sourced) vs a plain kernelspec of
  the same interpreter (no activation). Goal: ≤ 1.2×.

The environments are made as the tests make them (tests/helpers/envtrees.py: pip once,
then copies). How: bench/README.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from helpers import envtrees

from jlservice.inlab import environments

from .lab import Lab
from .report import Metric, say
from .session import BenchError, Session, options, parse, run

LIST_GOAL_MS = 50.0
START_GOAL = 1.2
PLAIN = "plain-env-python"


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
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        finder.find()
        samples.append((time.perf_counter() - began) * 1000)
    return samples


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


def add_plain_kernelspec(lab: Lab, python: Path) -> None:
    """The environment's interpreter as a plain kernelspec: no activation at all."""
    import json

    spec = lab.root / "jupyter-path" / "kernels" / PLAIN
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": PLAIN, "language": "python"})
    )
    lab.env["JUPYTER_PATH"] = str(lab.root / "jupyter-path")


def measure(session: Session) -> tuple[list[Metric], dict[str, Any]]:
    runs, count = session.args.runs, session.args.envs
    envs, first = build(session, count)
    looks = look_ms(envs, runs * 10)
    plain = Lab(session, "plain")
    with_envs = Lab(session, "envs", kernels={"environments": [f"{envs}/*"]})
    add_plain_kernelspec(with_envs, first / "bin" / "python")
    for lab in (plain, with_envs):
        lab.timed_start()
    tokens = {id(lab): lab.cli("token").stdout.strip() for lab in (plain, with_envs)}
    listing_ms(plain, tokens[id(plain)])  # warm-up
    began = time.perf_counter()  # the first listing inspects every environment
    listed = with_envs.api("GET", "api/kernelspecs", tokens[id(with_envs)]).json()
    first_ms = (time.perf_counter() - began) * 1000
    own = [n for n in listed["kernelspecs"] if n.startswith("conda-env-")]
    if len(own) != count:
        raise BenchError(f"{len(own)} environment kernels listed, expected {count}")
    say(f"listing, {runs * 10} requests each ...")
    base_ms, envs_ms, changed_ms = [], [], []
    for _ in range(runs * 10):
        base_ms.append(listing_ms(plain, tokens[id(plain)]))
        envs_ms.append(listing_ms(with_envs, tokens[id(with_envs)]))
    for i in range(runs):
        (envs / f"new{i}" / "conda-meta").mkdir(parents=True)
        changed_ms.append(listing_ms(with_envs, tokens[id(with_envs)]))
    say(f"kernel starts, {runs} each ...")
    token = tokens[id(with_envs)]
    first_result_s(with_envs, token, PLAIN)  # warm-ups: the interpreter's files cached
    first_result_s(with_envs, token, "conda-env-env00-py")
    plain_s, activated_s = [], []
    for _ in range(runs):
        plain_s.append(first_result_s(with_envs, token, PLAIN))
        activated_s.append(first_result_s(with_envs, token, "conda-env-env00-py"))
    for lab in (plain, with_envs):
        lab.shutdown()
    metrics = [
        Metric(
            f"GET api/kernelspecs, {count} environments",
            "ms",
            envs_ms,
            baseline="no [kernels] environments",
            baseline_samples=base_ms,
            goal=LIST_GOAL_MS,
            goal_on="difference",
            note=f"the first listing after JupyterLab started: {first_ms:.0f} ms",
        ),
        Metric(
            f"GET api/kernelspecs just after an environment appeared ({count} + 1)",
            "ms",
            changed_ms,
            baseline="no [kernels] environments",
            baseline_samples=base_ms,
            goal=LIST_GOAL_MS,
            goal_on="difference",
        ),
        Metric(
            f"a look unasked, {count} environments unchanged (every 2 s in JupyterLab)",
            "ms",
            looks,
        ),
        Metric(
            "kernel start → first result, activated conda-style env (activate.d script)",
            "s",
            activated_s,
            baseline="plain kernelspec, same interpreter",
            baseline_samples=plain_s,
            goal=START_GOAL,
        ),
    ]
    return metrics, {}


def main(argv: list[str] | None = None) -> int:
    p = options(__doc__, runs=10)
    p.add_argument("--envs", type=int, default=30, help="environments listed (default 30)")
    args = parse(p, argv, "jlservice", "jupyter-lab", "python")
    return run(
        "bench/environments.py", "[kernels] environments benchmark", args, args.runs, measure
    )


if __name__ == "__main__":
    sys.exit(main())
