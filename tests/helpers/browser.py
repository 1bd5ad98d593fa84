"""A real headless Chromium for tests, driven over the DevTools protocol (websocket-client).

Started with a fresh profile and a free debugging port (Chromium picks it and writes it to
DevToolsActivePort); ended by PID, with every process it started.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psutil
import requests
import websocket

from .procs import Processes, stop, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    def __init__(self, profile: Path) -> None:
        profile.mkdir(parents=True)
        self.profile = profile
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",  # needed as root; the test's pages are its own
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs = Processes()
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []  # of the domains enabled (Network.enable…)
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, "Chromium")
        port = int(port_file.read_text().split()[0])
        pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(p for p in pages if p["type"] == "page")
        # No Origin header: Chromium refuses DevTools websockets from origins it does not know.
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], suppress_origin=True, timeout=60
        )
        self._remember()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
            elif msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def _remember(self) -> None:
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.proc.pid).children(recursive=True)
            self.procs.remember(self.proc.pid, *(p.pid for p in children))

    def close(self) -> None:
        self._remember()
        with contextlib.suppress(Exception):
            self.ws.close()
        scratch = self._scratch_dir()
        stop(self.proc, 20)
        self.procs.kill()
        if scratch is not None:  # a Chromium that is stopped leaves it behind
            shutil.rmtree(scratch, ignore_errors=True)

    def _scratch_dir(self) -> Path | None:
        """The /tmp/org.chromium.Chromium.* directory this Chromium's singleton socket is in
        (its profile links to it), or None."""
        try:
            socket_path = Path(os.readlink(self.profile / "SingletonSocket"))
        except OSError:
            return None
        scratch = socket_path.parent
        if scratch.parent != Path(tempfile.gettempdir()):
            return None
        return scratch if scratch.name.startswith("org.chromium.Chromium.") else None
