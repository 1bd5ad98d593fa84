"""`jlservice token` reads a file; it must not pay for importing the server stack."""

from __future__ import annotations

import os
import subprocess
import sys

from jlservice import procfs, state

HEAVY = (
    "jupyter_server",
    "jupyterlab",
    "tornado",
    "watchdog",
    "pynvml",
    "structlog",
    "psutil",
    "prometheus_client",
    "rich",
)


def test_token_imports_nothing_heavy(tmp_path):
    me = os.getpid()
    current = state.State(
        token="ab" * 32,
        url="http://127.0.0.1:8888/",
        ip="127.0.0.1",
        port=8888,
        base_url="/",
        user="u",
        notebook_dir="/",
        config_path=None,
        supervisor_pid=me,
        supervisor_started_at=procfs.start_time(me),
        status=state.READY,
    )
    state.write_state(tmp_path, current)
    config_file = tmp_path / "jlservice.toml"
    config_file.write_text(f'[service]\nstate_dir = "{tmp_path}"\n')

    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "jlservice",
            "token",
            "--config",
            str(config_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ab" * 32 + "\n"
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "jlservice" in imported
    assert not imported & set(HEAVY), imported & set(HEAVY)


def test_the_first_start_imports_nothing_heavy():
    """`jlservice run` starts JupyterLab before its own heavy imports (supervisor.main): what
    that first start runs must not import them, nor log (the log is set up only after it)."""
    code = (
        "import sys\n"
        "from jlservice.start import cold\n"
        "from jlservice.kernels import handover\n"
        "from jlservice.start.launcher import build\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
