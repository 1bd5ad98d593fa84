"""`jlservice top` in a real terminal (tmux: send-keys, capture-pane) and `--once`, with
notebook paths that hold spaces, quotes, unicode and what rich would take for markup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from helpers.metrics import metrics_section, open_notebook
from helpers.procs import wait_for
from helpers.service import PYTHON

QUOTED = 'dir with space/it\'s "quoted" ünïcødé.ipynb'
MARKUP = "[red]not red[/red].ipynb"


class Tmux:
    """A tmux server of the test's own (its own socket), ended by its pid."""

    def __init__(self) -> None:
        self.socket = f"jlservice-test-{uuid.uuid4().hex[:12]}"

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # The pane's size is the terminal's: not the COLUMNS and LINES pytest's run has set.
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check, env=env
        )

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top").stdout

    def running(self) -> bool:
        return self("has-session", "-t", "top", check=False).returncode == 0

    def close(self) -> None:
        found = self("display-message", "-p", "#{pid}", check=False).stdout.strip()
        if found.isdigit():
            subprocess.run(["kill", found], check=False)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is missing (tests/run.sh installs it as root)")
    made = Tmux()
    yield made
    made.close()


def test_top_shows_every_notebook_sorts_and_quits_on_q(service_factory, tmux) -> None:
    svc = service_factory(metrics=metrics_section())
    svc.start()
    token = svc.state()["token"]
    quoted, _ = open_notebook(svc, token, QUOTED)
    markup, _ = open_notebook(svc, token, MARKUP)

    def both_sampled() -> bool:
        report = json.loads(svc.cli("status", "--json").stdout)
        return {r["kernel_id"] for r in report["notebooks"]["notebooks"]} >= {quoted, markup}

    wait_for(both_sampled, 30, "both notebooks in a round")
    once = svc.cli("top", "--once")  # into a pipe: whole lines
    assert once.returncode == 0, once.stderr
    assert QUOTED in once.stdout and MARKUP in once.stdout and "MEMORY▼" in once.stdout

    command = f"{PYTHON} -m jlservice top --config {svc.config_path}"
    tmux("new-session", "-d", "-s", "top", "-x", "200", "-y", "40", "-c", str(svc.root), command)
    try:
        screen = wait_for(
            lambda: (s := tmux.screen()) and QUOTED in s and MARKUP in s and s, 30, "the view"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the screen:\n{tmux.screen()}") from None
    assert "MEMORY▼" in screen and "jlservice: JupyterLab ready" in screen
    tmux("send-keys", "-t", "top", "n")
    screen = wait_for(lambda: "NOTEBOOK▼" in (s := tmux.screen()) and s, 10, "sorted by name")
    lines = screen.splitlines()
    assert [i for i, t in enumerate(lines) if MARKUP in t] < [
        i for i, t in enumerate(lines) if QUOTED in t
    ]  # "[" sorts before "d"
    tmux("send-keys", "-t", "top", "q")
    wait_for(lambda: not tmux.running(), 10, "top to quit on q")
