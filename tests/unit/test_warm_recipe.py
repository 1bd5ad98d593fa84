"""Which JupyterLab commands can start from a warm parent, and what a warm parent bakes in."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from helpers.launch import build

from jlservice.start.warm import recipe
from jlservice.supervisor import children

CONSOLE_SCRIPT = (
    "# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom jupyterlab.labapp import main\n"
    "if __name__ == '__main__':\n    sys.exit(main())\n"
)


def _script(tmp_path: Path, name: str, shebang: str, body: str = CONSOLE_SCRIPT) -> str:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!{shebang}\n{body}")
    path.chmod(0o755)
    return str(path)


def test_a_pip_console_script_preloads_what_it_imports(tmp_path: Path) -> None:
    script = _script(tmp_path, "jupyter-lab", sys.executable)
    launch = build(tmp_path, command=[script, "--collaborative"])
    r = recipe.for_launch(launch)
    assert isinstance(r, recipe.Recipe)
    assert (r.interpreter, r.script, r.module) == (sys.executable, script, None)
    assert r.preload == ("jupyterlab.labapp", recipe.SERVER_MODULE)
    assert r.path0 == str(tmp_path / "bin")
    assert r.args(launch) == [script, *launch.argv[1:]]
    assert "--collaborative" in r.args(launch)


def test_an_env_shebang_is_resolved_on_jupyterlabs_path(tmp_path: Path) -> None:
    script = _script(tmp_path, "jupyter-lab", "/usr/bin/env python3")
    bindir = os.path.dirname(sys.executable)
    r = recipe.for_launch(build(tmp_path, {"PATH": bindir}, command=[script]))
    assert isinstance(r, recipe.Recipe)
    assert r.interpreter == os.path.join(bindir, "python3")


def test_python_dash_m_runs_the_module(tmp_path: Path) -> None:
    launch = build(tmp_path, command=[sys.executable, "-m", "jupyterlab"])
    r = recipe.for_launch(launch)
    assert isinstance(r, recipe.Recipe)
    assert (r.script, r.module) == (None, "jupyterlab")
    assert r.path0 == launch.cwd  # as `python -m` started in the notebook dir would have it
    assert r.args(launch) == ["-m", *launch.argv[3:]]


def test_what_cannot_start_warm_says_why(tmp_path: Path) -> None:
    shell = _script(tmp_path, "wrapper", "/bin/sh", 'exec jupyter-lab "$@"\n')
    flagged = _script(tmp_path, "flagged", f"{sys.executable} -X importtime")
    cases = {
        shell: f"{shell} is not a Python script",
        flagged: f"{flagged} is not a Python script",
    }
    for command, why in cases.items():
        assert recipe.for_launch(build(tmp_path, command=[command])) == why
    dash_c = build(tmp_path, command=[sys.executable, "-c", "pass"])
    assert recipe.for_launch(dash_c) == f"{sys.executable} is run with options other than -m MODULE"


def test_launches_differing_only_in_what_the_child_applies_share_a_recipe(tmp_path: Path) -> None:
    script = _script(tmp_path, "jupyter-lab", sys.executable)
    a = recipe.for_launch(build(tmp_path, command=[script], port=9001))
    b = recipe.for_launch(build(tmp_path, command=[script], port=9002, umask="0027"))
    c = recipe.for_launch(build(tmp_path, command=[script], env={"CUDA_VISIBLE_DEVICES": "1"}))
    assert a == b
    assert a != c  # the environment is baked in


def test_an_exit_reaped_before_it_was_watched_is_not_lost() -> None:
    """A warm-started server is our child before the warm parent has told us its pid."""

    async def scenario() -> tuple[children.ExitStatus, bool]:
        reaper = children.Reaper()
        reaper.install(asyncio.get_running_loop())
        reaper.expect_adoption()
        child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
        child.returncode = 0  # the Reaper reaps it
        await reaper.wait_change(10)
        assert reaper.reaped(child.pid)
        status = await asyncio.wait_for(reaper.watch(child.pid), 1)
        assert not reaper.reaped(child.pid)  # one watch() ends the window
        again = reaper.watch(child.pid)  # forgotten: a later process may reuse the pid
        return status, again.done()

    status, stale = asyncio.run(scenario())
    assert (status.code, status.signal) == (7, None)
    assert not stale


def test_a_pid_the_warm_parent_reports_is_checked(tmp_path: Path) -> None:
    """The warm parent runs as the lab user: root must not signal a pid it merely names."""
    from jlservice.start.warm import keeper

    launch = build(tmp_path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        reaper = children.Reaper()
        assert keeper._forked_by(child.pid, launch, reaper)  # our child, the lab user's
        assert not keeper._forked_by(1, launch, reaper)  # init is nobody's fork
        assert not keeper._forked_by(os.getppid(), launch, reaper)  # not our child
        assert not keeper._forked_by("1", launch, reaper)
        other = SimpleNamespace(account=SimpleNamespace(uid=launch.account.uid + 1))
        assert not keeper._forked_by(child.pid, other, reaper)  # another user's
    finally:
        child.kill()
        child.wait()
