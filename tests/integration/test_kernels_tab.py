"""The user's side of kernels that survive JupyterLab: an open notebook tab in a real browser
(headless Chromium) goes on after JupyterLab is killed, without a reload of the page."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers.browser import CHROMIUM
from helpers.notebook import EXPOSE_APP, open_tab
from helpers.procs import wait_for

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (tests/run.sh installs it when root)"
)

# A cell that runs through the crash: a line a second until the test, having seen its lines
# come through the new server, tells it to stop with a file in its working directory (the
# notebook's).
# JupyterLab's front end tries to reconnect at once, then after a random wait in a doubling
# range (up to 1 s, 3 s, 7 s, 15 s…): the tab may take many seconds to see the new server,
# and the cell outlasts that, however long, and no longer.
COUNT = (
    "import os, time\n"
    "i = 0\n"
    "while not os.path.exists('stop-counting') and i < 600:\n"
    "    print(f'line-{i}', flush=True); i += 1; time.sleep(1)\n"
    "print('counted', flush=True)"
)


# How long JupyterLab's front end waits for a kernel_info reply, once a kernel connection is
# back, before it sends what it queued meanwhile (3 s by default). Its own kernel_info request
# waits in that queue, behind a cell run in the gap: longer than the test waits, this shows
# whether jlservice's labextension sent the queue at once, and no clock has to.
KERNEL_INFO_TIMEOUT_MS = 600_000


def _user_settings(directory: Path) -> dict[str, str]:
    """[lab.options] for JupyterLab user settings in `directory` (the lab user reads them)
    with KERNEL_INFO_TIMEOUT_MS."""
    plugin = directory / "@jupyterlab" / "apputils-extension"
    plugin.mkdir(parents=True)
    settings = {"kernelInfoTimeout": KERNEL_INFO_TIMEOUT_MS}
    (plugin / "kernels-settings.jupyterlab-settings").write_text(json.dumps(settings))
    return {"LabApp.user_settings_dir": str(directory)}


def test_an_open_tab_goes_on_after_kill9_without_a_reload(service_factory, tmp_path):
    service = service_factory(lab={"options": EXPOSE_APP})  # the tab's way in (no change)
    service.start()
    browser, tab = open_tab(service, tmp_path / "chromium-profile")
    try:
        tab.run(0)
        tab.run(1, COUNT)
        wait_for(lambda: "line-2" in tab.output(1), 60, "the counting cell to print")
        page = browser.evaluate("performance.timeOrigin")
        lab = service.lab_pid
        os.kill(lab, signal.SIGKILL)
        killed = time.monotonic()
        service.wait_ready(not_pid=lab)
        dead = _last_line(tab)  # the old server is gone: what comes next, the new one brings

        # The running cell went on in the kernel: its later lines appear in the same tab
        # (those printed while the tab had no server are lost), and, told to stop, its last.
        wait_for(lambda: _last_line(tab) > dead, 90, "the cell's later lines in the tab")
        (service.notebooks / "stop-counting").touch()
        wait_for(lambda: "counted" in tab.output(1), 30, "the cell's last line in the tab")
        tab.run(2, "x + 1")
        wait_for(lambda: "42" in tab.output(2), 60, "x + 1 = 42 in the tab")
        assert time.monotonic() - killed < 90
        assert browser.evaluate("performance.timeOrigin") == page  # never reloaded
        shown = tab.output(1).split()
        assert shown[0] == "line-0" and shown[-1] == "counted"  # some lost in the gap
    finally:
        browser.close()


def _websockets(events: list[dict], path: str) -> tuple[set[str], set[str]]:
    """Of the tab's network `events`, the websockets to a URL with `path` in it that it
    opened, and those the server took (handshake 101)."""
    opened = {
        e["params"]["requestId"]
        for e in events
        if e["method"] == "Network.webSocketCreated" and path in e["params"]["url"]
    }
    taken = {
        e["params"]["requestId"]
        for e in events
        if e["method"] == "Network.webSocketHandshakeResponseReceived"
        and e["params"]["response"]["status"] == 101
    }
    return opened, taken & opened


def test_after_kill9_the_tabs_first_reconnection_gets_through(service_factory, tmp_path):
    """The tab reconnects its kernel's websocket at once when it closes, while no JupyterLab
    runs: the connection waits for the next one, which takes it. Refused, the front end
    tries again after a random wait that doubles each time (up to 1, 3, 7, 15 s…), or after
    10-30 s once its look-up of the kernel is refused too. The cell run in the gap, queued
    by the tab, is sent as soon as the connection is back, without the front end's wait for
    a kernel_info reply (KERNEL_INFO_TIMEOUT_MS)."""
    # Cold restarts: the gap lasts seconds, so that the tab's first try surely falls in it
    # (a warm restart leaves ~0.3 s; test_an_open_tab_goes_on… runs with the defaults).
    options = EXPOSE_APP | _user_settings(tmp_path / "lab-settings")
    service = service_factory(lab={"options": options}, restart={"warm": False})
    service.start()
    browser, tab = open_tab(service, tmp_path / "chromium-profile")
    try:
        timeout = tab.js("return window.jupyterapp.serviceManager.kernels.kernelInfoTimeout;")
        assert timeout == KERNEL_INFO_TIMEOUT_MS  # the tab's connection waits that long
        browser.call("Network.enable")
        tab.run(0, "x = 41; print('set')")
        wait_for(lambda: "set" in tab.output(0), 60, "x = 41 in the tab")
        since = len(browser.events)
        os.kill(service.lab_pid, signal.SIGKILL)
        wait_for(lambda: tab.kernel_status() != "connected", 60, "the tab to notice", 0.005)
        tab.run(1, "x + 1")
        wait_for(lambda: "42" in tab.output(1), 120, "x + 1 = 42 in the tab", 0.01)
        opened, taken = _websockets(browser.events[since:], "/channels")
        assert opened, "the tab never reconnected its kernel"
        assert taken == opened  # the old code: the first try refused
    finally:
        browser.close()


def _last_line(tab) -> int:
    """The number of the counting cell's last line the tab shows (-1: none yet)."""
    shown = [int(w[5:]) for w in tab.output(1).split() if w.startswith("line-")]
    return max(shown, default=-1)
