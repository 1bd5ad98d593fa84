"""What ending some kernels ends (children.kernels_of), with real processes below a child
subreaper as the supervisor is: the kernel, what it started (in its session or not), also
once re-parented; never a process another kernel started meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys

SUPERVISOR = r"""
import json, os, signal, subprocess, sys, time
import psutil
from jlservice import prctl
from jlservice.supervisor import children

prctl.become_subreaper()
KERNEL = (
    "import subprocess, sys, time\n"
    "a = subprocess.Popen(['sleep', '60'])\n"
    "b = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
    "print(a.pid, b.pid, flush=True)\n"
    "time.sleep(60)"
)
kernel = subprocess.Popen([sys.executable, "-c", KERNEL], start_new_session=True,
                          stdout=subprocess.PIPE)
in_session, left_session = map(int, kernel.stdout.readline().split())
found = children.kernels_of([kernel.pid])
first = sorted(p.pid for p in found())
# Another kernel's daemon, re-parented to the supervisor once its shell exits.
shell = subprocess.Popen(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
                         start_new_session=True, stdout=subprocess.PIPE)
daemon = int(shell.stdout.readline())
shell.wait()
os.kill(kernel.pid, signal.SIGKILL)
kernel.wait()
deadline = time.monotonic() + 10
while any(psutil.Process(p).ppid() != os.getpid() for p in (in_session, left_session, daemon)):
    assert time.monotonic() < deadline, "not re-parented"
    time.sleep(0.01)
second = sorted(p.pid for p in found())
for pid in (in_session, left_session, daemon):
    os.kill(pid, signal.SIGKILL)
print(json.dumps({"first": first, "second": second, "kernel": kernel.pid,
                  "in_session": in_session, "left_session": left_session, "daemon": daemon}))
"""


def test_a_kernels_processes_are_ended_with_it_and_another_kernels_daemon_is_not() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SUPERVISOR], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    kernel, ours = seen["kernel"], sorted([seen["in_session"], seen["left_session"]])
    assert seen["first"] == sorted([kernel, *ours])
    # The kernel dead, what it started is the supervisor's child now: still the kernel's
    # (the one that left its session by who it is); the other kernel's daemon never is.
    assert seen["second"] == ours
