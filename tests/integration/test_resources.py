"""What each notebook uses, with real kernels started through JupyterLab: the metrics and
`jlservice status --json` against what /proc says of the kernel's tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
from helpers.browser import CHROMIUM
from helpers.cgroup import OwnCgroup, own_cgroup
from helpers.metrics import metrics_section, metrics_url, open_notebook, wait_scrape
from helpers.notebook import EXPOSE_APP, open_tab
from helpers.procs import wait_for
from helpers.service import IS_ROOT

NOTEBOOK = 'dir with space/it\'s "quoted" ünïcødé \\ back.ipynb'
MIB = 2**20
# Three processes the notebook starts, each holding 50 MiB it has written (resident).
HOLDERS = (
    "import subprocess, sys\n"
    "code = 'import sys, time; b = b\"x\" * (50 << 20); print(1, flush=True); time.sleep(600)'\n"
    "procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE)"
    " for _ in range(3)]\n"
    "[p.stdout.readline() for p in procs]\n"
    "print(' '.join(str(p.pid) for p in procs))"
)


# A cell that lowers its kernel's oom_score_adj just below +500.
LOWER = (
    "try:\n"
    "    with open('/proc/self/oom_score_adj', 'w') as f:\n"
    "        f.write('499')\n"
    "except PermissionError as exc:\n"
    "    print('refused', exc.errno)\n"
    "else:\n"
    "    print('lowered')"
)


def _lower_as(uid: int, pid: int, value: int) -> str:
    """What writing `value` to `pid`'s oom_score_adj does, as `uid` (the lab user)."""
    code = (
        "import sys\n"
        "try:\n"
        "    with open(f'/proc/{sys.argv[1]}/oom_score_adj', 'w') as f:\n"
        "        f.write(sys.argv[2])\n"
        "except PermissionError:\n"
        "    print('refused')\n"
        "else:\n"
        "    print('lowered')"
    )
    argv = [sys.executable, "-c", code, str(pid), str(value)]
    return subprocess.run(argv, user=uid, capture_output=True, text=True, check=True).stdout.strip()


def _sets_floors() -> bool:
    """Whether root here may lower an oom_score_adj (CAP_SYS_RESOURCE), and so lock floors:
    a container may withhold it, and then jlservice protects nothing and locks nothing."""
    with open("/proc/self/status") as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    return IS_ROOT and bool(caps & (1 << 24))


def _oom_score(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _of(samples, name: str, kernel_id: str) -> float | None:
    for (metric, labels), value in samples.items():
        if metric == name and ("kernel_id", kernel_id) in labels:
            assert ("notebook", NOTEBOOK) in labels, labels
            return value
    return None


def test_a_kernel_and_its_children_as_proc_sees_them(service_factory) -> None:
    svc = service_factory(metrics=metrics_section())
    svc.start()
    token = svc.state()["token"]
    kernel_id, pid = open_notebook(svc, token, NOTEBOOK)
    children = [int(p) for p in svc.execute(token, kernel_id, HOLDERS).split()]
    tree = _tree(pid)
    assert set(children) <= {p.pid for p in tree}
    url = metrics_url(svc)
    s = wait_scrape(
        url,
        lambda s: _of(s, "jlservice_kernel_processes", kernel_id) == len(tree),
        "a round that counts the kernel's children",
    )
    proc_rss = sum(p.memory_info().rss for p in tree)
    rss = _of(s, "jlservice_kernel_resident_memory_bytes", kernel_id)
    assert rss >= 3 * 50 * MIB
    assert rss == pytest.approx(proc_rss, rel=0.05)
    cpu = _of(s, "jlservice_kernel_cpu_seconds_total", kernel_id)
    used = sum(sum(p.cpu_times()[:2]) for p in _tree(pid))
    assert 0 < cpu <= used + 0.05
    assert _of(s, "jlservice_kernel_busy", kernel_id) == 0
    assert _of(s, "jlservice_kernel_idle_seconds", kernel_id) >= 0
    assert _of(s, "jlservice_kernel_oom_kills_total", kernel_id) == 0

    def listed() -> dict | None:
        report = json.loads(svc.cli("status", "--json").stdout)
        rows = [r for r in report["notebooks"]["notebooks"] if r["kernel_id"] == kernel_id]
        return rows[0] if rows and rows[0]["processes"] == len(tree) else None

    row = wait_for(listed, 30, "the kernel in `jlservice status --json`")
    assert row["notebook"] == NOTEBOOK and row["pid"] == pid
    assert row["rss_bytes"] == pytest.approx(proc_rss, rel=0.05)
    assert row["state"] == "idle" and row["oom_kills"] == 0

    if _sets_floors():
        # jlservice alone is protected; root wrote each child's value, and with it the floor
        # it cannot go below: a notebook cannot hand its kernel, nor JupyterLab, -900.
        assert _oom_score(svc.proc.pid) == -900
        assert _oom_score(pid) == 500
        assert svc.execute(token, kernel_id, LOWER) == "refused 13"
        uid = svc.account.uid
        warm = svc.state()["warm_parent"]
        for lab in (svc.lab_pid, *([warm["pid"]] if warm else [])):
            assert _oom_score(lab) == 0
            assert _lower_as(uid, lab, -1) == "refused"
    else:  # a container that withholds it: kernels still go first, and the log says so
        assert _oom_score(pid) == 500 and _oom_score(svc.lab_pid) == 0
        (off,) = [e for e in svc.log_events() if e["event"] == "oom_protection_off"]
        assert "CAP_SYS_RESOURCE" in off["problem"], off


# Processes the notebook starts one after another, 60 MiB each — each smaller than
# JupyterLab — until the OOM killer ends one: whose, it prints.
HOG = (
    "import subprocess, sys, time\n"
    "code = 'import time; b = b\"x\" * (60 << 20); time.sleep(600)'\n"
    "procs = []\n"
    "while not any(p.poll() is not None for p in procs):\n"
    "    procs.append(subprocess.Popen([sys.executable, '-c', code]))\n"
    "    time.sleep(0.3)\n"
    "dead = next(p for p in procs if p.poll() is not None)\n"
    "[p.kill() for p in procs]\n"
    "print(dead.pid, dead.returncode)"
)


def test_a_kernel_kept_across_a_crash_is_still_counted(service_factory) -> None:
    """After kill -9 of JupyterLab its kernels are jlservice's children (the subreaper):
    the next JupyterLab adopts them, and they count as before, their CPU counter going on."""
    svc = service_factory(metrics=metrics_section())
    svc.start()
    token = svc.state()["token"]
    kernel_id, pid = open_notebook(svc, token, NOTEBOOK)
    svc.execute(token, kernel_id, "sum(range(10**7))")
    url = metrics_url(svc)
    s = wait_scrape(
        url, lambda s: _of(s, "jlservice_kernel_processes", kernel_id) == 1, "the kernel counted"
    )
    before = _of(s, "jlservice_kernel_cpu_seconds_total", kernel_id)
    lab = svc.lab_pid
    os.kill(lab, signal.SIGKILL)
    svc.wait_ready(not_pid=lab)
    assert psutil.Process(pid).ppid() == svc.proc.pid  # kept: now jlservice's child
    s = wait_scrape(
        url,
        lambda s: (
            _of(s, "jlservice_kernel_processes", kernel_id) == 1
            and _of(s, "jlservice_kernel_restarts_total", kernel_id) == 0
        ),
        "the adopted kernel counted",
    )
    assert _of(s, "jlservice_kernel_cpu_seconds_total", kernel_id) >= before > 0
    rss = psutil.Process(pid).memory_info().rss
    assert _of(s, "jlservice_kernel_resident_memory_bytes", kernel_id) == pytest.approx(
        rss, rel=0.05
    )


@pytest.fixture
def memcg() -> Iterator[OwnCgroup]:
    if not IS_ROOT:
        pytest.skip("needs root: a memory cgroup of the test's own")
    with own_cgroup() as made:
        yield made


def test_the_oom_killer_takes_a_kernels_process_never_jupyterlab(service_factory, memcg) -> None:
    """In a memory cgroup of the test's own (v1 on this machine) that runs out, the notebook
    that allocates loses a process of its own — although JupyterLab is the largest process
    there — and jlservice says which notebook it was, what it had and the limit; JupyterLab
    and another kernel live on."""
    svc = service_factory(metrics=metrics_section())
    svc.start(wrap=memcg.wrap())
    token = svc.state()["token"]
    lab = svc.lab_pid
    hog_id, hog_pid = open_notebook(svc, token, NOTEBOOK)
    other_id, other_pid = open_notebook(svc, token, "other.ipynb")
    assert svc.execute(token, other_id, "x = 41; print(x)").strip() == "41"
    assert psutil.Process(lab).memory_info().rss > 80 * MIB  # more than each of the hog's
    limit = memcg.usage() + 250 * MIB
    memcg.limit(limit)
    offset = svc.log_size()
    victim, returncode = svc.execute(token, hog_id, HOG, timeout=120).split()
    assert returncode == "-9"
    assert memcg.oom_kills() >= 1

    def logged() -> dict | None:  # the hog may lose two before it looks: the one it saw
        events = svc.log_events(offset)
        kills = (e for e in events if e.get("event") == "kernel_oom_killed")
        return next((e for e in kills if e.get("pid") == int(victim)), None)

    line = wait_for(logged, 30, "the kill of the process the hog saw die, in jlservice's log")
    assert line["notebook"] == NOTEBOOK and line["kernel_id"] == hog_id
    assert line["limit_bytes"] == limit
    assert 60 * MIB <= line["memory_bytes"] < 100 * MIB
    assert svc.lab_pid == lab and psutil.Process(lab).is_running()
    assert psutil.Process(other_pid).is_running() and psutil.Process(hog_pid).is_running()
    assert svc.execute(token, other_id, "print(x + 1)").strip() == "42"
    # The hog may lose a second process before it notices the first: each is told.
    kills = [e for e in svc.log_events(offset) if e.get("event") == "kernel_oom_killed"]
    assert {e["kernel_id"] for e in kills} == {hog_id}
    wait_scrape(
        metrics_url(svc),
        lambda s: _of(s, "jlservice_kernel_oom_kills_total", hog_id) == len(kills),
        "the kills counted for the notebook",
    )
    status = json.loads(svc.cli("status", "--json").stdout)
    assert status["oom_kills"] == len(kills)
    assert status["last_oom_kill"]["notebook"] == NOTEBOOK
    text = svc.cli("status").stdout
    assert f"OOM kills:   {len(kills)}" in text and hog_id in text, text


# The toasts JupyterLab shows (and the notification center keeps), as the user reads them.
TOASTS = "return Array.from(document.querySelectorAll('.jp-toast-message'), e => e.innerText);"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tests/run.sh does it)")
def test_an_open_notebook_tab_says_its_kernel_was_oom_killed(service_factory, memcg, tmp_path):
    """A notebook open in a browser whose kernel's process the OOM killer ends shows a
    notification naming the notebook, what the process had, the limit and what to do; the
    lab user's markup in the notebook's name shows as the characters it is."""
    # The tab is driven through window.jupyterapp, which EXPOSE_APP exposes (no change else).
    svc = service_factory(metrics=metrics_section(), lab={"options": EXPOSE_APP})
    svc.start(wrap=memcg.wrap())
    name = "<b>x<img src=x>.ipynb"  # short: the notification's 140 characters hold it whole
    browser, tab = open_tab(svc, tmp_path / "chromium-profile", name=name)
    try:
        memcg.limit(memcg.usage() + 250 * MIB)
        offset = svc.log_size()
        tab.run(1, HOG)

        def killed() -> dict | None:
            events = svc.log_events(offset)
            return next((e for e in events if e.get("event") == "kernel_oom_killed"), None)

        line = wait_for(killed, 120, "a kill of the notebook's process, in jlservice's log")
        assert line["notebook"] == name, line
        said = wait_for(
            lambda: [t for t in tab.js(TOASTS) or [] if t.startswith(f"{name}: ")],
            30,
            "the notification in the tab",
            interval=0.2,
        )
        assert "the OOM killer ended" in said[0] and "limit" in said[0], said
        # The limit hit is the test's cgroup above jlservice's (as a container's would be).
        assert "the limit is shared with other notebooks" in said[0], said
        markup = "return document.querySelector('.jp-toast-message b, .jp-toast-message img')"
        assert tab.js(markup) is None
    finally:
        browser.close()
