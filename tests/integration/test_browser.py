"""A real browser: headless Chromium opens `jlservice token --url` and JupyterLab renders."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers.browser import CHROMIUM, Chromium
from helpers.procs import wait_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # git-ignored

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (tests/run.sh installs it when root)"
)


def test_jupyterlab_launcher_renders_in_chromium(service, tmp_path):
    service.start()
    url = service.cli("token", "--url").stdout.strip()
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=url)
        # The launcher is drawn by JupyterLab's own JavaScript once the app has started:
        # the page loaded, the token logged in, and the API answered the front end.
        wait_for(
            lambda: browser.evaluate("!!document.querySelector('.jp-Launcher')"),
            180,
            "JupyterLab's launcher in the page",
            interval=0.5,
        )
        time.sleep(1)  # let the icons paint before the picture
        shot = ARTIFACTS / "browser-launcher.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
        (tmp_path / "browser-launcher.png").write_bytes(shot.read_bytes())
        # Logged in by the URL's token: the address bar no longer carries it.
        assert "token=" not in browser.evaluate("location.href")
        assert browser.evaluate("document.title")
    finally:
        browser.close()
