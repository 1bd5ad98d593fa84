"""nb_conda_kernels under the service: jlservice finds the conda of the [lab] command's
install and gives it to JupyterLab; the doctor asks it, as the lab user, what it lists."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from helpers import envtrees
from helpers.launch import make_config

from jlservice.admin.doctor.context import Context
from jlservice.admin.doctor.environments import check_conda
from jlservice.start import conda, launcher

NB_CONDA = {"ServerApp.kernel_spec_manager_class": "nb_conda_kernels.CondaKernelSpecManager"}


def install(tmp_path: Path) -> tuple[Path, Path]:
    """A conda install with JupyterLab in its env `jl`: (its conda, the jupyter-lab)."""
    root = tmp_path / "miniconda3"
    exe = envtrees.fake_conda(root, [root / "envs" / "jl", root / "envs" / "gpu"])
    lab = root / "envs" / "jl" / "bin" / "jupyter-lab"
    lab.parent.mkdir(parents=True)
    lab.write_text("#!/bin/sh\n")
    lab.chmod(0o755)
    return exe, lab


def test_nb_conda_kernels_is_recognised_in_options() -> None:
    assert conda.uses_nb_conda_kernels(NB_CONDA)
    assert conda.uses_nb_conda_kernels({"CondaKernelSpecManager.env_filter": "x"})
    assert not conda.uses_nb_conda_kernels({"ServerApp.allow_origin": "*"})


def test_jupyterlab_gets_the_conda_of_its_own_install(tmp_path: Path) -> None:
    exe, lab = install(tmp_path)
    cfg = make_config(tmp_path, command=[str(lab)], options=NB_CONDA)
    env = launcher.build(cfg, environ={"PATH": "/usr/bin:/bin"}).env
    assert "CONDA_EXE" not in env  # nb_conda_kernels runs `conda`, found on this PATH
    # JupyterLab's own bin/ first (a bare `python` is its), conda's after, condabin/ first.
    root = exe.parent.parent
    path = [str(lab.parent), "/usr/bin", "/bin"]
    path += [str(lab.parent.parent / "condabin"), str(root / "condabin"), str(root / "bin")]
    assert env["PATH"].split(os.pathsep) == path
    assert shutil.which("conda", path=env["PATH"]) == str(exe)
    condabin = root / "condabin" / "conda"
    condabin.parent.mkdir()
    shutil.copy(exe, condabin)
    assert shutil.which("conda", path=env["PATH"]) == str(condabin)  # as conda's own order


def test_an_explicit_conda_exe_wins(tmp_path: Path) -> None:
    _, lab = install(tmp_path)
    lab_env = {"CONDA_EXE": "/else/conda"}
    cfg = make_config(tmp_path, command=[str(lab)], options=NB_CONDA, env=lab_env)
    env = launcher.build(cfg, environ={"PATH": "/usr/bin:/bin"}).env
    assert env["CONDA_EXE"] == "/else/conda" and "condabin" not in env["PATH"]


def test_the_launch_never_looks_at_the_conda_install(tmp_path: Path, monkeypatch) -> None:
    """Root stats nothing of the lab user's install: a dead network filesystem under it
    cannot hang a reload, and conda appearing or going does not change the launch (which
    would restart JupyterLab)."""
    exe, lab = install(tmp_path)
    cfg = make_config(tmp_path, command=[str(lab)], options=NB_CONDA)
    environ = {"PATH": "/usr/bin:/bin"}
    with_conda = launcher.build(cfg, environ=environ)
    exe.unlink()
    assert launcher.build(cfg, environ=environ) == with_conda
    answer = threading.Event()
    root = str(tmp_path / "miniconda3")

    def hanging(real):
        def call(path, *args, **kwargs):
            if os.fsdecode(path).startswith(root):
                answer.wait(30)  # as a filesystem whose server is gone
            return real(path, *args, **kwargs)

        return call

    for module, name in [(os, "stat"), (os, "lstat"), (os, "access"), (os.path, "isfile")]:
        monkeypatch.setattr(module, name, hanging(getattr(module, name)))
    built = []
    worker = threading.Thread(target=lambda: built.append(launcher.build(cfg, environ=environ)))
    worker.start()
    worker.join(5)
    answer.set()
    assert built == [with_conda]


def test_without_nb_conda_kernels_nothing_is_added(tmp_path: Path) -> None:
    _, lab = install(tmp_path)
    env = launcher.build(make_config(tmp_path, command=[str(lab)]), environ={}).env
    assert "CONDA_EXE" not in env


def context(cfg) -> Context:
    return Context(None, cfg, None, None, None, False)


def test_doctor_asks_that_conda_what_it_lists(tmp_path: Path) -> None:
    exe, lab = install(tmp_path)
    result = check_conda(context(make_config(tmp_path, command=[str(lab)], options=NB_CONDA)))
    assert result.ok is True, result
    assert f"{exe} lists 3 environments" in result.detail and "gpu" in result.detail


def test_doctor_says_when_there_is_no_conda(tmp_path: Path) -> None:
    _, lab = install(tmp_path)
    (tmp_path / "miniconda3" / "bin" / "conda").unlink()
    result = check_conda(context(make_config(tmp_path, command=[str(lab)], options=NB_CONDA)))
    assert result.ok is False and "no conda next to" in result.detail
    assert f"{tmp_path}/miniconda3/condabin" in result.detail
    assert "CONDA_EXE" in result.fix


def test_doctor_says_when_conda_fails(tmp_path: Path) -> None:
    _, lab = install(tmp_path)
    broken = tmp_path / "broken-conda"
    broken.write_text("#!/bin/sh\necho 'CondaError: no such thing' >&2\nexit 1\n")
    broken.chmod(0o755)
    cfg = make_config(
        tmp_path, command=[str(lab)], options=NB_CONDA, env={"CONDA_EXE": str(broken)}
    )
    result = check_conda(context(cfg))
    assert result.ok is False and "status 1: CondaError: no such thing" in result.detail


@pytest.mark.parametrize(
    "body", ["exec yes\n", "head -c 5000000 /dev/zero | tr '\\0' x >&2\nexit 1\n"]
)
def test_doctor_reads_no_more_of_an_answer_than_it_takes(tmp_path: Path, body: str) -> None:
    """A conda that never stops talking, on stdout or stderr: the doctor stops reading at
    4 MiB and ends it."""
    _, lab = install(tmp_path)
    chatty = tmp_path / "chatty-conda"
    chatty.write_text(f"#!/bin/sh\n{body}")
    chatty.chmod(0o755)
    cfg = make_config(
        tmp_path, command=[str(lab)], options=NB_CONDA, env={"CONDA_EXE": str(chatty)}
    )
    result = check_conda(context(cfg))
    assert result.ok is False and "answered more than 4 MiB" in result.detail, result.detail[:200]
