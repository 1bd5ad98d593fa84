"""[kernels] environments: kernels of conda environments and venvs in JupyterLab, started
through its REST API as the lab user and looked at from inside; changes seen live; broken
environments reported, never fatal.

One set of real environment trees (helpers.envtrees; pip runs once) and one service serve
the whole module: building them is the slow part.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import envtrees, fs
from helpers.browser import CHROMIUM, Chromium
from helpers.procs import wait_for
from helpers.service import IS_ROOT, PYTHON, Service

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root: JupyterLab as the lab user")

RESTARTED = "JLST_RESTARTED"  # what an activate.d script added after a kernel's start exports
STACKED = "JLST_STACKED"  # what an activate.d script prepends to
VARIABLES = (
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "VIRTUAL_ENV",
    "PYTHONPATH",
    envtrees.ACTIVATED,
    RESTARTED,
    STACKED,
)
PROBE = (
    "import json, os, sys; print(json.dumps({'prefix': sys.prefix, 'uid': os.getuid(), "
    "'pid': os.getpid(), "
    "'path': os.environ['PATH'].split(':'), "
    f"**{{k: os.environ.get(k) for k in {VARIABLES!r}}}}}))"
)


class Trees:
    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        self.base = root / "conda"
        self.gpu = self.base / "envs" / "gpu"
        self.hang = self.base / "envs" / "hang"
        self.broken = self.base / "envs" / "broken"
        self.venvs = home / "venvs"
        self.ml = self.venvs / "ml"
        self.patterns = [str(self.base), f"{self.base}/envs/*", "~/venvs/*"]


@pytest.fixture(scope="module")
def trees(tmp_path_factory, lab_user):
    root = tmp_path_factory.mktemp("environments")
    for directory in (root, *list(root.parents)[:3]):
        directory.chmod(directory.stat().st_mode | 0o755)
    t = Trees(root, Path(lab_user.home))
    envtrees.pip_env(t.base)
    (t.base / "conda-meta").mkdir()
    envtrees.copy_env(t.base, t.gpu, conda=True)
    envtrees.add_activate_script(t.gpu, "x.sh", f'export {envtrees.ACTIVATED}="$CONDA_PREFIX"\n')
    envtrees.add_r_kernel(t.gpu)
    envtrees.copy_env(t.base, t.hang, conda=True)
    envtrees.add_activate_script(t.hang, "hang.sh", "sleep 600\n")
    envtrees.broken_env(t.broken)
    envtrees.copy_env(t.base, t.ml, conda=False, link=False)
    envtrees.give(t.venvs, lab_user)
    yield t
    shutil.rmtree(t.venvs, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(trees, lab_user, tmp_path_factory):
    root = tmp_path_factory.mktemp("envservice")
    root.chmod(0o755)
    svc = Service(root, lab_user=lab_user, kernels={"environments": trees.patterns})
    try:
        svc.start()
        yield svc, svc.cli("token").stdout.strip()
    finally:
        svc.cleanup()


def specs(svc: Service, token: str) -> dict[str, dict]:
    response = svc.api("GET", "api/kernelspecs", token)
    response.raise_for_status()
    return {name: s["spec"] for name, s in response.json()["kernelspecs"].items()}


def probe(svc: Service, token: str, kernel: str) -> dict:
    """What the kernel `kernel` sees, from inside; then it is shut down."""
    kernel_id, _ = svc.start_kernel(token, kernel)
    try:
        return json.loads(svc.execute(token, kernel_id, PROBE))
    finally:
        svc.api("DELETE", f"api/kernels/{kernel_id}", token)


def test_every_environments_kernels_are_listed_and_broken_ones_logged(lab, trees):
    svc, token = lab
    listed = specs(svc, token)
    assert set(listed) == {
        "python3",  # JupyterLab's own, as without environments
        "conda-env-base-py",
        "conda-env-gpu-py",
        "conda-env-gpu-ir",
        "conda-env-hang-py",
        "venv-ml-py",
    }, sorted(listed)
    assert listed["conda-env-gpu-py"]["display_name"] == "Python 3 (ipykernel) [conda env:gpu]"
    assert listed["conda-env-gpu-ir"]["display_name"] == "R [conda env:gpu]"
    assert listed["conda-env-gpu-ir"]["language"] == "R"
    assert listed["venv-ml-py"]["display_name"] == "Python 3 (ipykernel) [venv:ml]"
    specs(svc, token)  # listed again: the broken ones are not said again
    said = [line for line in svc.log_text().splitlines() if f"environment {trees.broken}" in line]
    assert len(said) == 2, said
    assert any("bad/kernel.json: not valid JSON" in line for line in said)
    assert any("python missing" in line for line in said)


def test_a_conda_kernel_runs_activated(lab, trees, lab_user):
    svc, token = lab
    seen = probe(svc, token, "conda-env-gpu-py")
    assert seen["prefix"] == str(trees.gpu)
    assert seen["path"][0] == str(trees.gpu / "bin")
    assert seen["CONDA_PREFIX"] == str(trees.gpu) and seen["CONDA_DEFAULT_ENV"] == "gpu"
    assert seen[envtrees.ACTIVATED] == str(trees.gpu)  # its activate.d script ran
    assert seen["VIRTUAL_ENV"] is None and seen["PYTHONPATH"] is None
    assert seen["uid"] == lab_user.uid


def test_a_kernel_an_environment_ships_runs_activated(lab, trees):
    """Its kernel.json says a bare `R`: the environment's, first on the activated PATH."""
    svc, token = lab
    seen = probe(svc, token, "conda-env-gpu-ir")
    assert seen["prefix"] == str(trees.gpu) and seen["CONDA_PREFIX"] == str(trees.gpu)
    assert seen[envtrees.ACTIVATED] == str(trees.gpu)


def test_a_venv_kernel_runs_activated(lab, trees, lab_user):
    svc, token = lab
    seen = probe(svc, token, "venv-ml-py")
    assert seen["prefix"] == str(trees.ml) and seen["VIRTUAL_ENV"] == str(trees.ml)
    assert seen["path"][0] == str(trees.ml / "bin") and seen["CONDA_PREFIX"] is None


def test_a_hanging_activation_script_is_named_and_the_kernel_starts(lab, trees):
    svc, token = lab
    seen = probe(svc, token, "conda-env-hang-py")
    assert seen["prefix"] == str(trees.hang) and seen["CONDA_PREFIX"] == str(trees.hang)
    said = [line for line in svc.log_text().splitlines() if "hang.sh did not finish" in line]
    assert len(said) == 1 and str(trees.hang) in said[0], said


def test_an_environment_made_or_removed_shows_without_a_restart(lab, trees, lab_user):
    svc, token = lab
    lab_pid = svc.lab_pid
    new = trees.venvs / "fresh"
    shutil.copytree(trees.ml, new, symlinks=True, copy_function=os.link)  # pip's files, fast
    envtrees.give(new, lab_user)
    wait_for(lambda: "venv-fresh-py" in specs(svc, token), 10, "the new venv's kernel")
    shutil.rmtree(new)
    wait_for(lambda: "venv-fresh-py" not in specs(svc, token), 10, "the venv's kernel gone")
    assert svc.lab_pid == lab_pid


def cards(browser: Chromium) -> list[str]:
    """The labels of the launcher's cards the page shows now."""
    labels = "Array.from(document.querySelectorAll('.jp-LauncherCard-label'), c => c.innerText)"
    return browser.evaluate(labels) or []


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tests/run.sh does it)")
def test_an_open_launcher_shows_a_new_environment_and_loses_it(lab, trees, lab_user, tmp_path):
    """A launcher open in a browser: a venv made gets its card within seconds and loses it
    when removed, without a reload of the page (JupyterLab itself asks only every 61 s)."""
    svc, token = lab
    browser = Chromium(tmp_path / "chromium-profile")
    new = trees.venvs / "shown"
    card = "Python 3 (ipykernel) [venv:shown]"
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=f"{svc.base}lab?reset&token={token}")
        wait_for(lambda: "Python 3 (ipykernel) [venv:ml]" in cards(browser), 180, "the launcher")
        page = browser.evaluate("performance.timeOrigin")
        shutil.copytree(trees.ml, new, symlinks=True, copy_function=os.link)
        envtrees.give(new, lab_user)
        wait_for(lambda: card in cards(browser), 10, "the new venv's card", 0.2)
        shutil.rmtree(new)
        wait_for(lambda: card not in cards(browser), 10, "the venv's card gone", 0.2)
        assert browser.evaluate("performance.timeOrigin") == page  # never reloaded
    finally:
        browser.close()
        shutil.rmtree(new, ignore_errors=True)


def test_the_users_own_kernelspecs_keep_working(lab, trees, lab_user):
    """`ipykernel install --user` beside the environments, as without them."""
    svc, token = lab
    install = [str(trees.ml / "bin" / "python"), "-m", "ipykernel", "install", "--user"]
    subprocess.run(
        [*install, "--name", "mine"],
        check=True,
        capture_output=True,
        user=lab_user.uid,
        env={"HOME": lab_user.home, "PATH": "/usr/bin:/bin"},
    )
    try:
        assert "mine" in specs(svc, token)
        assert probe(svc, token, "mine")["prefix"] == str(trees.ml)
    finally:
        shutil.rmtree(Path(lab_user.home) / ".local" / "share" / "jupyter" / "kernels" / "mine")


def test_doctor_lists_the_environments_and_the_broken_one(lab, trees):
    svc, _ = lab
    result = svc.cli("doctor")
    line = next(x for x in result.stdout.splitlines() if x[2:].startswith("environments:"))
    assert line.startswith("✗ ") and "5 found" in line, line
    for kernel in ("conda-env-gpu-ir", "venv-ml-py", "conda-env-hang-py"):
        assert kernel in line
    assert f"broken: broken ({trees.broken})" in line and "python missing" in line


def listed_from(listed: dict[str, dict], prefix: Path) -> list[str]:
    """The names `listed` gives the kernels of the environment at `prefix`."""
    return sorted(
        name
        for name, spec in listed.items()
        if spec["metadata"].get("jlservice_environment") == str(prefix)
    )


def test_no_environment_takes_over_a_kernel_name(lab, trees, lab_user, other_user):
    """Another user's venv of the same name, made while JupyterLab runs, first in search
    order: neither it nor the user's own keeps venv-torch-py; the user's own `--user`
    kernelspec of that name is the one listed under it; a conda prefix inside envs/ that
    holds an envs/ of its own is not "base"."""
    svc, token = lab
    mine, theirs, fake_base = trees.venvs / "torch", trees.base / "envs" / "torch", None
    shutil.copytree(trees.ml, mine, symlinks=True, copy_function=os.link)
    envtrees.give(mine, lab_user)
    user_spec = Path(lab_user.home) / ".local" / "share" / "jupyter" / "kernels" / "venv-torch-py"
    try:
        wait_for(lambda: listed_from(specs(svc, token), mine) == ["venv-torch-py"], 10, "mine")
        offset = svc.log_size()
        # Hard links: the other user owns the directories (what decides who made it), not
        # the files they share with the lab user's venv.
        shutil.copytree(trees.ml, theirs, symlinks=True, copy_function=os.link)
        for directory, _, _ in os.walk(theirs):
            os.chown(directory, other_user.uid, other_user.gid)
        wait_for(lambda: listed_from(specs(svc, token), theirs), 10, "the other user's venv")
        listed = specs(svc, token)
        assert "venv-torch-py" not in listed, listed.get("venv-torch-py")
        (own,), (other,) = listed_from(listed, mine), listed_from(listed, theirs)
        assert own.startswith("venv-torch-py-") and other.startswith("venv-torch-py-")
        # JupyterLab's line reaches jlservice's log through a pipe, maybe after the listing.
        said = wait_for(lambda: _said(svc, offset, "kernel name venv-torch-py"), 10, "the clash")
        assert len(said) == 1 and str(mine) in said[0] and str(theirs) in said[0], said
        line = next(x for x in svc.cli("doctor").stdout.splitlines() if "environments:" in x)
        assert f"owned by other users: torch ({theirs}, uid {other_user.uid})" in line, line

        user_spec.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(trees.ml / "share" / "jupyter" / "kernels" / "python3", user_spec)
        envtrees.give(user_spec.parent.parent.parent.parent, lab_user)
        shutil.rmtree(theirs)
        listed = specs(svc, token)
        assert "jlservice_environment" not in listed["venv-torch-py"]["metadata"]
        assert listed_from(listed, mine) == [own]  # named as before: the name is its own

        fake_base = trees.base / "envs" / "zz"
        shutil.copytree(trees.ml, fake_base, symlinks=True, copy_function=os.link)
        (fake_base / "conda-meta").mkdir()
        (fake_base / "envs").mkdir()
        wait_for(lambda: "conda-env-zz-py" in specs(svc, token), 10, "the fake base")
        assert listed_from(specs(svc, token), trees.base) == ["conda-env-base-py"]
    finally:
        for path in (mine, theirs, user_spec, fake_base):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


def test_an_environment_that_never_answers_blocks_no_listing(lab, trees):
    """A dead network filesystem as an environment directory (a FUSE mount that never
    answers): the listing answers all the same, as it was, names it in the log, and a kernel
    of another environment starts; JupyterLab is not restarted."""
    svc, token = lab
    before, lab_pid = specs(svc, token), svc.lab_pid
    dead = trees.base / "envs" / "dead"
    dead.mkdir()
    try:
        offset = svc.log_size()
        with fs.hung(dead):
            began = time.monotonic()
            assert specs(svc, token) == before
            assert time.monotonic() - began < 10  # the hang itself: 30 s, the request's limit
            # JupyterLab's output reaches jlservice's log through a pipe: a moment later.
            named = f"environment {dead} does not answer"
            wait_for(lambda: _said(svc, offset, named), 10, "the log to name it")
            assert specs(svc, token) == before
            kernel_id, _ = svc.start_kernel(token, "venv-ml-py")
            svc.api("DELETE", f"api/kernels/{kernel_id}", token)

        def answers() -> bool:
            return specs(svc, token) == before and "environments answer again" in svc.log_text()

        wait_for(answers, 10, "the environments to answer again")
        assert svc.lab_pid == lab_pid
    finally:
        dead.rmdir()


def _said(svc: Service, offset: int, words: str) -> list[str]:
    """The lines of the log from byte `offset` on that contain `words`."""
    log = svc.log_path.read_bytes()[offset:].decode(errors="replace")
    return [line for line in log.splitlines() if words in line]


def crash_and_adopt(svc: Service, kernel_id: str) -> None:
    """kill -9 of JupyterLab; back once the next one has adopted the kernel `kernel_id`."""
    old, offset = svc.lab_pid, svc.log_size()
    os.kill(old, signal.SIGKILL)
    svc.wait_ready(not_pid=old)

    def adopted() -> bool:
        events = svc.log_events(offset)
        return any(
            e.get("event") == "kernel_adopted" and e.get("kernel_id") == kernel_id for e in events
        )

    wait_for(adopted, 60, "the kernel's adoption")


def test_an_environments_kernel_survives_a_crash_of_jupyterlab(lab, trees):
    """Activation ends in exec: the kept process is the kernel, found and adopted as any."""
    svc, token = lab
    kernel_id, pid = svc.start_kernel(token, "conda-env-gpu-py")
    svc.execute(token, kernel_id, "import os; x = 41")
    crash_and_adopt(svc, kernel_id)
    seen = svc.execute(token, kernel_id, "print(x + 1, os.getpid(), os.environ['CONDA_PREFIX'])")
    assert seen.split() == ["42", str(pid), str(trees.gpu)]
    svc.api("DELETE", f"api/kernels/{kernel_id}", token)


def restart_after_adoption(svc: Service, token: str, prefix: Path) -> tuple[int, dict]:
    """A kernel of the environment at `prefix` started, kept through kill -9 of JupyterLab,
    then (an activate.d script y.sh added) restarted in JupyterLab: (its first pid, what
    the restarted kernel sees)."""
    kernel_id, pid = svc.start_kernel(token, f"conda-env-{prefix.name}-py")
    try:
        crash_and_adopt(svc, kernel_id)
        envtrees.add_activate_script(prefix, "y.sh", f'export {RESTARTED}="$CONDA_PREFIX"\n')
        svc.api("POST", f"api/kernels/{kernel_id}/restart", token).raise_for_status()
        return pid, json.loads(svc.execute(token, kernel_id, PROBE))
    finally:
        (prefix / "etc" / "conda" / "activate.d" / "y.sh").unlink(missing_ok=True)
        svc.api("DELETE", f"api/kernels/{kernel_id}", token)


def test_an_adopted_kernels_restart_sources_the_activation_scripts_again(lab, trees):
    """Restarted in JupyterLab after it survived JupyterLab's crash, an environment's
    kernel starts through the activation again: a script added meanwhile runs."""
    svc, token = lab
    pid, seen = restart_after_adoption(svc, token, trees.gpu)
    assert seen["pid"] != pid  # a new kernel process, under the same id
    assert seen["prefix"] == str(trees.gpu) and seen["path"][0] == str(trees.gpu / "bin")
    assert seen["path"].count(str(trees.gpu / "bin")) == 1
    assert seen["CONDA_PREFIX"] == str(trees.gpu) and seen["CONDA_DEFAULT_ENV"] == "gpu"
    assert seen[envtrees.ACTIVATED] == str(trees.gpu) and seen[RESTARTED] == str(trees.gpu)


def test_an_adopted_kernels_restart_starts_from_what_a_fresh_start_has(lab, trees):
    """A script that prepends to a variable (as CUDA packages' do to LD_LIBRARY_PATH) finds
    it as a fresh start has it, not already holding what its last run prepended."""
    svc, token = lab
    stacks = f'export {STACKED}="$CONDA_PREFIX/lib${{{STACKED}:+:${STACKED}}}"\n'
    envtrees.add_activate_script(trees.gpu, "z.sh", stacks)
    try:
        _, seen = restart_after_adoption(svc, token, trees.gpu)
    finally:
        (trees.gpu / "etc" / "conda" / "activate.d" / "z.sh").unlink()
    assert seen[STACKED] == f"{trees.gpu}/lib"


def test_nb_conda_kernels_finds_conda_under_the_service(service_factory, tmp_path):
    """JupyterLab of a conda install, nb_conda_kernels its kernelspec manager, no conda
    on PATH (as under systemd): it still lists the install's environments."""
    root = tmp_path / "miniconda3"
    gpu = root / "envs" / "gpu"
    (gpu / "bin").mkdir(parents=True)
    (gpu / "bin" / "python").symlink_to(envtrees.PYTHON)
    envtrees.fake_conda(root, [root / "envs" / "jl", gpu])
    command = root / "envs" / "jl" / "bin" / "jupyter-lab"
    command.parent.mkdir(parents=True)
    command.symlink_to(Path(PYTHON).parent / "jupyter-lab")
    options = {"ServerApp.kernel_spec_manager_class": "nb_conda_kernels.CondaKernelSpecManager"}
    standin = str(envtrees.nb_conda_standin(tmp_path / "standin"))
    svc = service_factory(
        lab={"command": [str(command)], "options": options, "env": {"PYTHONPATH": standin}}
    )
    svc.start()
    token = svc.cli("token").stdout.strip()
    assert "conda-env-gpu-py" in specs(svc, token), svc.log_text()[-2000:]
    lines = svc.cli("doctor").stdout.splitlines()
    line = next(x for x in lines if x[2:].startswith("conda:"))
    assert line.startswith("✓ ") and f"{root}/bin/conda lists 3 environments" in line, line
