"""A notebook open in a real browser (helpers.browser's Chromium), driven through
JupyterLab's own front-end API (`window.jupyterapp`, which `LabApp.expose_app_in_browser`
exposes): run a cell as Shift+Enter does, read what it shows."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from .browser import Chromium
from .procs import wait_for

# For [lab.options]: the tab drives JupyterLab through window.jupyterapp, which this
# exposes; it changes nothing on the server.
EXPOSE_APP = {"LabApp.expose_app_in_browser": True}

# The open notebook panel (the shell's current widget is unset in a window without focus).
_NOTEBOOK = (
    "const nb = Array.from(window.jupyterapp?.shell?.widgets('main') ?? [])"
    ".find(w => w.sessionContext);"
)
NOTEBOOK = {
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


class Tab:
    """A notebook open in Chromium, driven through JupyterLab's own front-end API."""

    def __init__(self, browser: Chromium) -> None:
        self.browser = browser

    def js(self, body: str):
        """Run `body` (an async function body) in the page; its JSON-able result."""
        expression = f"(async () => {{ {body} }})()"
        result = self.browser.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"].get("value")

    def run(self, index: int, source: str | None = None) -> None:
        """Run cell `index` (with `source`) as Shift+Enter does (CodeCell.execute, which
        the run-cell command calls), without waiting for it."""
        text = json.dumps(source)
        self.js(
            f"{_NOTEBOOK} const cell = nb.content.widgets[{index}];"
            f"if ({text} !== null) cell.model.sharedModel.setSource({text});"
            "cell.constructor.execute(cell, nb.sessionContext); return true;"
        )

    def output(self, index: int) -> str:
        return self.js(
            f"{_NOTEBOOK} const cell = nb.content.widgets[{index}];"
            "return cell.node.querySelector('.jp-OutputArea')?.innerText ?? '';"
        )

    def kernel_status(self) -> str | None:
        return self.js(
            f"{_NOTEBOOK} return nb?.sessionContext?.session?.kernel?.connectionStatus ?? null;"
        )


def open_tab(
    service: Any, profile: Path, cells: int = 3, name: str = "tab.ipynb"
) -> tuple[Chromium, Tab]:
    """Open notebook `name` of `cells` empty code cells (the first `x = 41`) in a new
    Chromium."""
    token = service.cli("token").stdout.strip()
    content = dict(NOTEBOOK, cells=[_cell(s) for s in ["x = 41", *[""] * (cells - 1)]])
    nb = {"type": "notebook", "content": content}
    path = urllib.parse.quote(name)
    service.api("PUT", f"api/contents/{path}", token, json=nb).raise_for_status()
    browser = Chromium(profile)
    browser.call("Page.enable")
    browser.call("Page.navigate", url=f"{service.base}lab/tree/{path}?token={token}")
    tab = Tab(browser)
    wait_for(
        lambda: tab.kernel_status() is not None,
        180,
        "the notebook and its kernel in the tab",
        interval=0.5,
    )
    wait_for(lambda: tab.kernel_status() == "connected", 120, "the kernel connection")
    return browser, tab


def _cell(source: str) -> dict[str, Any]:
    return {
        "cell_type": "code",
        "metadata": {},
        "source": source,
        "outputs": [],
        "execution_count": None,
    }
