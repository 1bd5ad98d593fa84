"""The user's side of kernels that survive JupyterLab: an open notebook tab in a real browser
(headless Chromium) goes on after JupyterLab is killed, without a reload of the page."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers.browser import CHROMIUM
from helpers.notebook import EXPOSE_APP, open_tab
from helpers.procs import wait_for

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (tests/run.sh installs it when root)"
)

# A cell that runs through the crash: a line a second for 45 s. (JupyterLab's front end
# tries to reconnect at once, then after a random wait in a doubling range (up to 1 s, 3 s,
# 7 s, 15 s…): the tab may take many seconds to see the new server.)
COUNT = "import time\nfor i in range(45):\n    print(f'line-{i}', flush=True)\n    time.sleep(1)"


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

        # The running cell went on in the kernel: its later lines appear in the same tab.
        wait_for(lambda: "line-44" in tab.output(1), 90, "the cell's last line in the tab")
        tab.run(2, "x + 1")
        wait_for(lambda: "42" in tab.output(2), 60, "x + 1 = 42 in the tab")
        assert time.monotonic() - killed < 90
        assert browser.evaluate("performance.timeOrigin") == page  # never reloaded
        shown = [line for line in tab.output(1).split() if line.startswith("line-")]
        assert shown[0] == "line-0" and shown[-1] == "line-44"  # some lost in the gap
    finally:
        browser.close()
