"""[kernels] environments: its validation, the launch, and the discovery and activation code
that runs inside JupyterLab (jlservice.inlab.environments and .activate), on small trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.launch import make_config

from jlservice import config, users
from jlservice.admin.doctor.context import Context
from jlservice.admin.doctor.environments import check_environments
from jlservice.inlab import activate, envglob, environments, envnames, envprefix
from jlservice.start import launcher

ACTIVATE = activate.__file__


def conda_env(root: Path, name: str = "gpu", kernels: dict[str, object] | None = None) -> Path:
    """A conda-style prefix: conda-meta/, bin/python, and the kernel.json files given."""
    prefix = root / name
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "bin").mkdir()
    (prefix / "bin" / "python").symlink_to(sys.executable)
    for kernel, spec in (kernels or {}).items():
        directory = prefix / "share" / "jupyter" / "kernels" / kernel
        directory.mkdir(parents=True)
        text = spec if isinstance(spec, str) else json.dumps(spec)
        (directory / "kernel.json").write_text(text)
    return prefix


def venv(root: Path, name: str, ipykernel: bool = True) -> Path:
    prefix = root / name
    site = prefix / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (prefix / "bin").mkdir()
    (prefix / "bin" / "python").symlink_to(sys.executable)
    if ipykernel:
        (site / "ipykernel_launcher.py").write_text("")
    return prefix


IPYKERNEL = {
    "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
    "metadata": {"debugger": True},
}
IR = {"argv": ["R", "--args", "{connection_file}"], "display_name": "R", "language": "R"}


# ── configuration and launch ──────────────────────────────────────────────────


@pytest.mark.parametrize("keep", [True, False])
def test_environments_default_to_none_and_the_launch_is_unchanged(tmp_path: Path, keep) -> None:
    """Unset: the launch is the one without the key, argv and environment alike (no
    kernelspec manager of jlservice's; its PYTHONPATH holds only the modules it always
    loads)."""
    kernels = {"survive_restarts": keep}
    cfg = make_config(tmp_path, {"kernels": kernels})
    assert cfg.kernels.environments == ()
    launch = launcher.build(cfg, environ={"PATH": "/usr/bin:/bin"})
    empty = make_config(tmp_path, {"kernels": {**kernels, "environments": []}})
    assert launcher.build(empty, environ={"PATH": "/usr/bin:/bin"}) == launch
    assert not launch.environments
    assert not any("kernel_spec_manager" in a or "Environment" in a for a in launch.argv)
    assert launch.env["PYTHONPATH"] == str(launch.inlab_dir)


def test_tilde_is_the_lab_users_home_and_globs_reach_jupyterlab(tmp_path: Path) -> None:
    patterns = ["~/venvs/*", "/opt/conda/envs/*/", "/opt/conda", "/opt/conda"]
    cfg = make_config(tmp_path, {"kernels": {"environments": patterns}})
    home = users.lookup(cfg.lab.user).home
    assert cfg.kernels.environments == (f"{home}/venvs/*", "/opt/conda/envs/*", "/opt/conda")
    launch = launcher.build(cfg, environ={"PATH": "/usr/bin:/bin"})
    assert launch.environments
    manager = "--ServerApp.kernel_spec_manager_class=jlservice_kernelspecs."
    assert any(a.startswith(manager) for a in launch.argv)
    assert f"--EnvironmentKernelSpecManager.environments={home}/venvs/*" in launch.argv
    # the server extension that says when the kernels change (the labextension that hears
    # it is always loaded, test_launcher)
    assert "jlservice_kernelspecs" in launch.server_extensions
    assert launch.env["PYTHONPATH"].split(os.pathsep)[0] == str(launch.inlab_dir)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("/opt/conda", "expected a list, got a string"),
        (["venvs/*"], "must be an absolute path"),
        (["~bob/venvs"], "only ~ (the lab user's home)"),
        (["/data/**"], "** is not supported"),
        (["/opt/\nconda"], "control character"),
        ([""], "expected a list of paths or globs"),
        ([3], "expected a list of paths or globs"),
    ],
)
def test_bad_environments_are_one_line_errors(tmp_path: Path, value, problem: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        make_config(tmp_path, {"kernels": {"environments": value}})
    message = str(info.value)
    assert "[kernels] environments" in message and problem in message
    assert "\n" not in message


def test_another_kernelspec_manager_is_refused_with_environments(tmp_path: Path) -> None:
    options = {"ServerApp.kernel_spec_manager_class": "nb_conda_kernels.CondaKernelSpecManager"}
    with pytest.raises(config.ConfigError, match="remove one of the two"):
        make_config(tmp_path, {"kernels": {"environments": ["/opt/conda"]}}, options=options)
    make_config(tmp_path, options=options)  # alone it is the user's choice


# ── discovery ─────────────────────────────────────────────────────────────────


def test_conda_envs_venvs_and_their_kernels_are_found(tmp_path: Path) -> None:
    base = conda_env(tmp_path, "conda", {"python3": IPYKERNEL})
    (base / "envs").mkdir()
    conda_env(base / "envs", "gpu", {"python3": IPYKERNEL, "ir": IR})
    (base / "envs" / "gpu" / "bin" / "R").write_text("#!/bin/sh\n")
    (base / "envs" / "gpu" / "bin" / "R").chmod(0o755)
    venv(tmp_path / "venvs", "ml")
    (tmp_path / "venvs" / "not-an-env").mkdir()
    finder = environments.Finder([f"{base}/envs/*", str(base), f"{tmp_path}/venvs/*"])
    found = {e.name: e for e in finder.find()}
    assert sorted(found) == ["base", "gpu", "ml"]
    gpu = found["gpu"]
    assert gpu.kind == "conda" and not gpu.problems
    kernels = {k.name: k for k in gpu.kernels}
    assert sorted(kernels) == ["conda-env-gpu-ir", "conda-env-gpu-py"]
    assert kernels["conda-env-gpu-py"].argv[0] == str(base / "envs" / "gpu" / "bin" / "python")
    assert kernels["conda-env-gpu-py"].spec["metadata"] == {"debugger": True}
    assert kernels["conda-env-gpu-ir"].argv == IR["argv"]  # found on the activated PATH
    ml = found["ml"]
    assert ml.kind == "venv" and [k.name for k in ml.kernels] == ["venv-ml-py"]
    assert ml.kernels[0].argv[1:] == ["-m", "ipykernel_launcher", "-f", "{connection_file}"]


def test_broken_environments_say_what_is_wrong_once(tmp_path: Path) -> None:
    conda_env(tmp_path, "badjson", {"bad": "{not json", "ir": IR})
    gone = conda_env(tmp_path, "gone", {"python3": IPYKERNEL})
    (gone / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    (gone / "lib" / "python3.11" / "site-packages" / "ipykernel_launcher.py").write_text("")
    (gone / "bin" / "python").unlink()
    (gone / "bin" / "python").symlink_to(tmp_path / "removed-base-python")
    lines: list[str] = []
    finder = environments.Finder([f"{tmp_path}/*"], log=lines.append)
    found = {e.name: e for e in finder.find()}
    assert found["badjson"].kernels == []  # R is nowhere
    assert any("bad/kernel.json: not valid JSON" in p for p in found["badjson"].problems)
    assert any("ir/kernel.json: R not found" in p for p in found["badjson"].problems)
    assert found["gone"].kernels == [] and len(found["gone"].problems) == 1
    assert "python missing" in found["gone"].problems[0]
    assert len(lines) == 3 and all(line.startswith("environment /") for line in lines)
    finder.find()
    assert len(lines) == 3  # nothing changed: not said again


def test_a_pattern_yields_at_most_max_matches_in_all_the_first_in_order(tmp_path: Path) -> None:
    for top in ("a", "b"):
        for i in range(600):
            (tmp_path / top / f"{i:04}").mkdir(parents=True)
    lines: list[str] = []
    found, _ = envglob.expand(f"{tmp_path}/*/*", log=lines.append)
    every = sorted(str(p) for p in tmp_path.glob("*/*"))
    assert found == every[: envglob.MAX_MATCHES]
    assert lines == [f"{tmp_path}/*/*: more than 1000 matches; the first are used"]


def test_hostile_kernel_json_is_bounded(tmp_path: Path) -> None:
    prefix = conda_env(tmp_path, "hostile", {"big": " " * (envprefix.MAX_JSON + 1)})
    fifo = prefix / "share" / "jupyter" / "kernels" / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "kernel.json")  # would block a plain open()
    deep = prefix / "share" / "jupyter" / "kernels" / "deep"
    deep.mkdir()
    (deep / "kernel.json").write_text("[" * 60_000)
    env, _ = envprefix.inspect(str(prefix))
    problems = " ".join(env.problems)
    assert "larger than 64 KiB" in problems and "not a regular file" in problems
    assert "deep/kernel.json: not valid JSON" in problems


def test_a_new_or_removed_environment_is_seen_by_the_next_listing(tmp_path: Path) -> None:
    root = tmp_path / "envs"
    root.mkdir()
    finder = environments.Finder([f"{root}/*", f"{tmp_path}/later"])
    assert finder.find() == []
    venv(root, "new")
    assert [e.name for e in finder.find()] == ["new"]
    conda_env(tmp_path, "later", {"python3": IPYKERNEL})
    assert sorted(e.name for e in finder.find()) == ["later", "new"]
    (tmp_path / "later" / "share" / "jupyter" / "kernels" / "python3" / "kernel.json").unlink()
    assert [e.kernels for e in finder.find() if e.name == "later"] == [[]]
    subprocess.run(["rm", "-rf", str(root / "new")], check=True)
    assert [e.name for e in finder.find()] == ["later"]
    generation = finder.generation
    finder.find()
    assert finder.generation == generation  # unchanged: nothing rebuilt


def test_a_hostile_environment_name_is_a_valid_kernel_name_and_one_log_line(tmp_path: Path):
    prefix = conda_env(tmp_path, "x\n[W fake] evil ..", {"bad": "{"})
    lines: list[str] = []
    (env,) = environments.Finder([f"{tmp_path}/*"], log=lines.append).find()
    assert envprefix.spec_name(env.kind, env.name, "py") == "conda-env-x_w_fake_evil_..-py"
    assert len(lines) == 1 and "\n" not in lines[0] and str(prefix).replace("\n", "\\n") in lines[0]


def test_no_environment_keeps_a_name_two_want_nor_one_jupyterlab_has(tmp_path: Path) -> None:
    """Whichever comes first in search order, and whatever else appears later: a name two
    environments want is neither's, and each one's own is stable."""
    a = conda_env(tmp_path / "a", "py", {"python3": IPYKERNEL})
    b = conda_env(tmp_path / "b", "py", {"python3": IPYKERNEL})
    conda_env(tmp_path / "c", "gpu", {"python3": IPYKERNEL})
    found = environments.Finder([f"{tmp_path}/*/*"]).find()
    kernels, collisions = envnames.named(found)
    by_prefix = {env.prefix: name for name, (env, _) in kernels.items()}
    assert collisions == {"conda-env-py-py": [str(a), str(b)]}
    assert by_prefix[str(a)] != by_prefix[str(b)]
    assert all(by_prefix[str(p)].startswith("conda-env-py-py-") for p in (a, b))
    assert by_prefix[str(tmp_path / "c" / "gpu")] == "conda-env-gpu-py"
    alone, _ = envnames.named([e for e in reversed(found) if e.prefix != str(b)])
    assert {n for n, (e, _) in alone.items() if e.prefix == str(a)} == {"conda-env-py-py"}
    beaten, said = envnames.named(found, taken={"conda-env-gpu-py"})  # the user's own
    gpu = [n for n, (e, _) in beaten.items() if e.name == "gpu"]
    assert gpu == [f"conda-env-gpu-py-{envnames.digest(str(tmp_path / 'c' / 'gpu'))}"]
    assert said["conda-env-gpu-py"] == [str(tmp_path / "c" / "gpu")]


def test_a_prefix_inside_envs_is_never_base(tmp_path: Path) -> None:
    base = conda_env(tmp_path, "conda", {"python3": IPYKERNEL})
    (base / "envs").mkdir()
    fake = conda_env(base / "envs", "zz", {"python3": IPYKERNEL})
    (fake / "envs").mkdir()
    found = environments.Finder([f"{base}/envs/*", str(base)]).find()
    assert {e.prefix: e.name for e in found} == {str(fake): "zz", str(base): "base"}


def test_doctor_form_prints_json(tmp_path: Path) -> None:
    venv(tmp_path, "ml")
    out = subprocess.run(
        [sys.executable, "-I", environments.__file__, f"{tmp_path}/*"],
        capture_output=True,
        check=True,
    )
    assert json.loads(out.stdout)[0]["kernels"][0]["name"] == "venv-ml-py"


# ── activation ────────────────────────────────────────────────────────────────


def run_activated(prefix: Path, kind: str = "conda", name: str = "gpu", **env: str):
    """Run `env -0` through the activation, as a kernel would be started."""
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env}
    proc = subprocess.run(
        [sys.executable, "-I", "-S", ACTIVATE, kind, str(prefix), name, "--", "env", "-0"],
        capture_output=True,
        env=base,
        timeout=60,
    )
    pairs = [p.partition("=") for p in proc.stdout.decode().split("\0") if p]
    return {k: v for k, _, v in pairs}, proc.stderr.decode()


def test_conda_activation_sets_what_conda_activate_sets(tmp_path: Path) -> None:
    prefix = conda_env(tmp_path / "envs", "gpu")
    scripts = prefix / "etc" / "conda" / "activate.d"
    scripts.mkdir(parents=True)
    (scripts / "cuda.sh").write_text('export CUDA_HOME="$CONDA_PREFIX/cuda"\n')
    (prefix / "conda-meta" / "state").write_text(json.dumps({"env_vars": {"STATE_VAR": "1"}}))
    env, err = run_activated(prefix, VIRTUAL_ENV="/old/venv", PATH="/old/venv/bin:/usr/bin")
    assert env["PATH"] == f"{prefix}/bin:/usr/bin"
    assert env["CONDA_PREFIX"] == str(prefix) and env["CONDA_DEFAULT_ENV"] == "gpu"
    assert env["CUDA_HOME"] == f"{prefix}/cuda" and env["STATE_VAR"] == "1"
    assert "VIRTUAL_ENV" not in env and "SHLVL" not in env
    assert err == ""


def test_venv_activation(tmp_path: Path) -> None:
    prefix = venv(tmp_path, "ml")
    env, _ = run_activated(prefix, "venv", "ml", CONDA_PREFIX="/opt/conda")
    assert env["VIRTUAL_ENV"] == str(prefix) and "CONDA_PREFIX" not in env
    assert env["PATH"].split(":")[0] == f"{prefix}/bin"


def test_a_fifo_as_conda_state_does_not_hang_the_start(tmp_path: Path) -> None:
    prefix = conda_env(tmp_path, "gpu")
    os.mkfifo(prefix / "conda-meta" / "state")
    env, err = run_activated(prefix)  # a blocking open() would wait for a writer forever
    assert env["CONDA_PREFIX"] == str(prefix) and err == ""


@pytest.mark.parametrize(
    ("script", "said"),
    [
        ("return 3\n", "b.sh failed (status 3)"),
        ("exit 4\n", "b.sh ended the shell (status 4)"),
        ("sleep 60\n", "b.sh did not finish within 5 s"),
        ("head -c 5000000 /dev/zero >&3\n", "printed more than 4 MiB"),
        ('export BIG="$(head -c 300000 /dev/zero | tr "\\0" x)"\n', "ended the shell (status 1"),
    ],
    ids=["fails", "exits", "hangs", "floods", "too-big-for-exec"],
)
def test_a_bad_activation_script_is_named_and_the_kernel_starts(
    tmp_path: Path, script: str, said: str
) -> None:
    prefix = conda_env(tmp_path, "gpu")
    scripts = prefix / "etc" / "conda" / "activate.d"
    scripts.mkdir(parents=True)
    (scripts / "a.sh").write_text("export FIRST=1\n")
    (scripts / "b.sh").write_text(script)
    env, err = run_activated(prefix)
    assert env["CONDA_PREFIX"] == str(prefix)  # the kernel started, activated
    lines = [line for line in err.splitlines() if line.startswith("jlservice:")]
    assert len(lines) == 1 and said in lines[0] and str(prefix) in lines[0], err
    assert ("FIRST" in env) == (script == "return 3\n")
    assert "BIG" not in env


def test_a_missing_kernel_program_is_one_line(tmp_path: Path) -> None:
    prefix = conda_env(tmp_path, "gpu")
    proc = subprocess.run(
        [sys.executable, "-I", "-S", ACTIVATE, "conda", str(prefix), "gpu", "--", "R"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 127
    assert (
        proc.stderr
        == f"jlservice: environment gpu ({prefix}): cannot start R: No such file or directory\n"
    )


def test_the_doctor_finds_what_jupyterlab_finds(tmp_path: Path) -> None:
    """The file JupyterLab runs, JupyterLab's PATH (a kernel's program found on it is not
    missing), JupyterLab's own environment left out."""
    lab = venv(tmp_path / "envs", "lab")
    (lab / "bin" / "jupyter-lab").write_text("#!/bin/sh\n")
    (lab / "bin" / "jupyter-lab").chmod(0o755)
    conda_env(tmp_path / "envs", "r", {"ir": IR})
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "R").write_text("#!/bin/sh\n")
    (tools / "R").chmod(0o755)
    cfg = make_config(
        tmp_path,
        {"kernels": {"environments": [f"{tmp_path}/envs/*"]}},
        command=[str(lab / "bin" / "jupyter-lab")],
        env={"PATH": f"{tools}:/usr/bin:/bin"},
    )
    result = check_environments(Context(None, cfg, None, None, None, False))
    assert result.ok is True and result.detail == "1 found: r (conda: conda-env-r-ir)", result
