"""[kernels] cull_idle_gpu with the fake NVML: a kernel that holds GPU memory and is idle past
the threshold is shut down, logged and counted with its notebook and the memory freed; a
busy one holding GPU memory is not (the choice itself: tests/unit/test_culler.py)."""

from __future__ import annotations

import contextlib
import threading

from helpers.metrics import metrics_section, metrics_url, open_notebook, scrape, value
from helpers.procs import wait_for
from nvml.fakenvml import FULL, GIB, Gpu

IDLE = 'idle "holder" ünïcødé.ipynb'
BUSY = "busy holder.ipynb"


def test_an_idle_gpu_holder_is_shut_down_a_busy_one_is_not(service_factory, fake_nvml) -> None:
    # A threshold of seconds, not hours: the test waits it out. cull_connected: the busy
    # kernel's open websocket must not be what spares it — being busy must.
    svc = service_factory(
        metrics=metrics_section(interval=1.0),
        kernels={"cull_idle_gpu": 3, "cull_connected": True},
    )
    svc.start(env=fake_nvml.env())
    token = svc.state()["token"]
    idle_id, idle_pid = open_notebook(svc, token, IDLE)
    busy_id, busy_pid = open_notebook(svc, token, BUSY)
    # A cell ran (as one that took GPU memory would have): idle from then on. A kernel no
    # client ever talked to says "starting" for good, and is never culled.
    assert svc.execute(token, idle_id, "1 + 1") == "2"

    def run_long() -> None:
        with contextlib.suppress(Exception):
            svc.execute(token, busy_id, "import time; time.sleep(300)", timeout=320)

    threading.Thread(target=run_long, daemon=True).start()
    wait_for(
        lambda: any(
            k["id"] == busy_id and k["execution_state"] == "busy"
            for k in svc.api("GET", "api/kernels", token).json()
        ),
        30,
        "the busy kernel to be busy",
    )
    offset = svc.log_size()
    fake_nvml.write([Gpu("GPU-a", **FULL, processes=[(idle_pid, 3 * GIB), (busy_pid, 5 * GIB)])])

    def culled() -> dict | None:
        found = [e for e in svc.log_events(offset) if e.get("event") == "kernel_culled"]
        return found[0] if found else None

    line = wait_for(culled, 60, "the idle holder to be culled")
    assert line["kernel_id"] == idle_id and line["notebook"] == IDLE
    assert line["gpu_memory_freed_bytes"] == 3 * GIB and line["idle_s"] >= 3
    kernels = {k["id"]: k for k in svc.api("GET", "api/kernels", token).json()}
    assert idle_id not in kernels and kernels[busy_id]["execution_state"] == "busy"
    s = scrape(metrics_url(svc))
    assert value(s, "jlservice_kernels_culled_total") == 1
    assert value(s, "jlservice_kernels_culled_gpu_memory_bytes_total") == 3 * GIB
    # The busy one, past the threshold many times over, was never shut down.
    assert [
        e["kernel_id"] for e in svc.log_events(offset) if e.get("event") == "kernel_culled"
    ] == [idle_id]
