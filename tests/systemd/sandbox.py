"""A real systemd as PID 1 in private PID and mount namespaces, for tests.

`unshare` gives systemd its own PID namespace (it is PID 1 there) and mount namespace; inside,
fresh tmpfs cover /run, /tmp and /var/tmp, and directories of the sandbox are bind-mounted over
/etc/systemd/system, /etc/jlservice and /var/lib, so enabling units, configuration and state
all land in the sandbox and survive a "reboot" (SIGKILL of PID 1, then boot() again).

Only the stub targets written here and the units the test installs are visible to it: the
distribution's units (/lib/systemd/system) are never on its unit path, because some of them
(systemd-tmpfiles-setup, for one) would clean the real, shared file system.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import psutil
from helpers.procs import wait_for

SYSTEMD = "/lib/systemd/systemd"
# The jlservice of the test venv: `jlservice install` points ExecStart at the script it runs from.
JLSERVICE = str(Path(sys.executable).parent / "jlservice")
STUB_TARGETS = (
    "multi-user",
    "sysinit",
    "basic",
    "sockets",
    "timers",
    "paths",
    "slices",
    "local-fs",
    "remote-fs",
    "swap",
    "network",
    "network-online",
    "shutdown",
    "final",
    "rescue",
    "emergency",
)
# Host directories covered by sandbox ones. A mount point that does not exist is made (an
# empty /etc/jlservice) and left: removing it could pull it from under another sandbox.
BINDS = {
    "etc-systemd": "/etc/systemd/system",
    "etc-jlservice": "/etc/jlservice",
    "var-lib": "/var/lib",
}
INSIDE = Path("/run/sandbox")  # where the sandbox's own units and logs appear inside
# --uts and --ipc: systemd as PID 1 sets the host name and owns IPC; neither may leak out.
UNSHARE = ("unshare", "--pid", "--fork", "--mount", "--mount-proc", "--propagation", "private")
UNSHARE += ("--uts", "--ipc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def jupyterlab_pid(supervisor: int) -> int | None:
    """The pid of JupyterLab under `supervisor` (None while there is none): its child named
    jupyter-lab — beside it runs the warm parent, named jlservice-warm."""
    labs = []
    for child in psutil.Process(supervisor).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.name() == "jupyter-lab":
                labs.append(child.pid)
    assert len(labs) <= 1, f"more than one JupyterLab under {supervisor}: {labs}"
    return labs[0] if labs else None


class Sandbox:
    # One booted at a time in a run, as an early test's runs while later tests do: there is
    # no cgroup namespace, so two would manage the same host cgroups of a unit.
    _one_at_a_time = threading.Lock()

    def __init__(self, root: Path, name: str = "jlservice-test") -> None:
        self.root = root
        self.name = name
        self.units = root / "units"
        self.logs = root / "log"
        for sub in ("units", "log", *BINDS):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.logs.chmod(0o777)
        self._write_stub_targets()
        for point in BINDS.values():
            Path(point).mkdir(mode=0o755, exist_ok=True)
        self.unshare: subprocess.Popen | None = None
        self.systemd: psutil.Process | None = None
        self.pid1: int | None = None  # systemd's PID as seen from outside
        self._booted = False  # holds _one_at_a_time
        # Without a cgroup namespace systemd makes its slices in the host's hierarchy; what it
        # made (and left empty) is removed again when the sandbox goes.
        self._cgroups_before = _cgroups()

    # ── the machine ─────────────────────────────────────────────────────────

    def boot(self, timeout: float = 30) -> None:
        """Once no other sandbox runs (an early test's is down within two minutes)."""
        assert Sandbox._one_at_a_time.acquire(timeout=300), "another sandbox ran for 300 s"
        self._booted = True
        binds = "\n".join(
            f"mount --bind {shlex.quote(str(self.root / src))} {shlex.quote(dst)}"
            for src, dst in BINDS.items()
        )
        script = f"""set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p {INSIDE}/units {INSIDE}/log
mount --bind {shlex.quote(str(self.units))} {INSIDE}/units
mount --bind {shlex.quote(str(self.logs))} {INSIDE}/log
{binds}
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
exec env container={self.name} SYSTEMD_UNIT_PATH={INSIDE}/units:/etc/systemd/system \\
    {SYSTEMD} --system --unit=default.target
"""
        console = (self.logs / "console.log").open("ab")
        self.unshare = subprocess.Popen(
            [*UNSHARE, "sh", "-c", script],
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        console.close()

        def systemd_pid() -> int | None:
            if self.unshare.poll() is not None:
                raise AssertionError(f"the sandbox did not boot:\n{self.console()}")
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(self.unshare.pid).children():
                    if child.exe() == str(Path(SYSTEMD).resolve()):
                        return child.pid
            return None

        self.pid1 = wait_for(systemd_pid, timeout, "systemd to start in the sandbox")
        self.systemd = psutil.Process(self.pid1)

        def running() -> bool:
            state = self.systemctl("is-system-running", check=False).stdout.strip()
            return state in ("running", "degraded")

        wait_for(running, timeout, "the sandbox's systemd to finish booting", interval=0.1)

    def crash(self) -> None:
        """Pull the plug: SIGKILL PID 1; the kernel then kills everything in its namespace."""
        try:
            self._pull_plug()
        finally:
            self._let_go()

    def reboot(self) -> None:
        self.crash()
        self.boot()

    def close(self) -> None:
        """crash(), and remove the cgroups its systemd made (again: nothing) before the next
        sandbox may boot: its systemd's new cgroups are empty for a while too."""
        try:
            self._pull_plug()
            made, self._cgroups_before = _cgroups() - self._cgroups_before, _cgroups()
            for path in sorted(made, key=lambda p: len(p.parts))[::-1]:
                with contextlib.suppress(OSError):  # still in use: not ours to remove
                    path.rmdir()
        finally:
            self._let_go()

    def _pull_plug(self) -> None:
        if self.systemd is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.systemd.kill()  # psutil checks it is still the process it was
        if self.unshare is not None:
            if self.systemd is None:  # it never got as far as systemd
                self.unshare.kill()
            self.unshare.wait(timeout=30)
        self.unshare = self.systemd = self.pid1 = None

    def _let_go(self) -> None:
        if self._booted:
            self._booted = False
            Sandbox._one_at_a_time.release()

    # ── talking to it ───────────────────────────────────────────────────────

    def run(self, *argv: str, check: bool = True, timeout: float = 180, **kw):
        """Run a command inside the sandbox (its mounts, its PID namespace)."""
        assert self.pid1 is not None, "the sandbox is not running"
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-p", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kw,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def systemctl(self, *args: str, check: bool = True, timeout: float = 180):
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def host_pid(self, ns_pid: int) -> int:
        """The PID, as this test sees it, of the sandbox's process `ns_pid`."""
        for proc in self.processes():
            with contextlib.suppress(psutil.Error, OSError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:") and int(line.split()[-1]) == ns_pid:
                        return proc.pid
        raise AssertionError(f"no process {ns_pid} in the sandbox")

    def processes(self) -> list[psutil.Process]:
        """Everything running in the sandbox but systemd itself."""
        if self.pid1 is None:
            return []
        with contextlib.suppress(psutil.NoSuchProcess):
            return psutil.Process(self.pid1).children(recursive=True)
        return []

    def drop_in(self, unit: str, name: str, text: str) -> None:
        path = self.root / "etc-systemd" / f"{unit}.d" / f"{name}.conf"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def log_to_file(self, unit: str) -> Path:
        """There is no journald here: send the unit's output to a file the test reads."""
        file = unit.replace("@", "_") + ".log"
        self.drop_in(
            unit,
            "test-log",
            f"[Service]\nStandardOutput=append:{INSIDE}/log/{file}\nStandardError=inherit\n",
        )
        return self.logs / file

    def console(self) -> str:
        path = self.logs / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_active(self, unit: str, timeout: float = 120) -> dict[str, str]:
        def active() -> dict[str, str] | None:
            props = self.show(unit, "ActiveState", "SubState", "StatusText", "MainPID")
            if props["ActiveState"] == "failed":
                raise AssertionError(f"{unit} failed: {props}")
            return props if props["ActiveState"] == "active" else None

        return wait_for(active, timeout, f"{unit} to be active", interval=0.1)

    def user_manager(self, account) -> UserSession:
        """Start `systemd --user` for `account`, as user@.service would after a login (that
        unit needs logind and PAM, which the sandbox does not have)."""
        units = self.units / "user"
        units.mkdir(exist_ok=True)
        (units / "default.target").write_text("[Unit]\nDescription=user default (stub)\n")
        for name in ("basic", "sockets", "timers", "paths", "shutdown", "exit"):
            (units / f"{name}.target").write_text(f"[Unit]\nDescription={name} (stub)\n")
        runtime = f"/run/user/{account.uid}"
        unit = f"test-user-manager-{account.uid}"
        (self.units / f"{unit}.service").write_text(
            f"""[Service]
Type=notify
User={account.name}
Delegate=yes
RuntimeDirectory=user/{account.uid}
RuntimeDirectoryMode=0700
Environment=XDG_RUNTIME_DIR={runtime}
Environment=SYSTEMD_UNIT_PATH={INSIDE}/units/user:{account.home}/.config/systemd/user
ExecStart={SYSTEMD} --user
"""
        )
        self.systemctl("daemon-reload")
        self.systemctl("start", unit)
        return UserSession(self, account, runtime)

    # ── set-up ──────────────────────────────────────────────────────────────

    def _write_stub_targets(self) -> None:
        (self.units / "default.target").write_text(
            "[Unit]\nDescription=sandbox default\nRequires=multi-user.target\n"
            "After=multi-user.target\nAllowIsolate=yes\n"
        )
        for name in STUB_TARGETS:
            (self.units / f"{name}.target").write_text(f"[Unit]\nDescription={name} (stub)\n")


class UserSession:
    """Commands run inside the sandbox as `account`, with its user manager at hand."""

    def __init__(self, box: Sandbox, account, runtime_dir: str) -> None:
        self.box = box
        self.account = account
        self.env = {
            "HOME": account.home,
            "USER": account.name,
            "XDG_RUNTIME_DIR": runtime_dir,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }

    def run(self, *argv: str, check: bool = True):
        become = ("setpriv", f"--reuid={self.account.uid}", f"--regid={self.account.gid}")
        return self.box.run(*become, "--init-groups", *argv, check=check, env=self.env)

    def systemctl(self, *args: str, check: bool = True):
        return self.run("systemctl", "--user", "--no-pager", *args, check=check)


def _cgroups() -> set[Path]:
    """Those a systemd makes (slices and scopes, and what is below them): where the machine
    itself is not run by systemd (as CI's), never one that another test makes meanwhile."""
    if not CGROUP_ROOT.is_dir():
        return set()
    found = (Path(d) for d, _, _ in os.walk(CGROUP_ROOT))
    return {p for p in found if any(part.endswith((".slice", ".scope")) for part in p.parts)}


def available() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    for tool in ("unshare", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (Debian packages util-linux and systemd)"
    if not Path(SYSTEMD).exists():
        return f"{SYSTEMD} is missing (Debian package systemd)"
    return None
