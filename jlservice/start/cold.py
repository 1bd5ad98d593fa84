"""A cold start: a new JupyterLab process, which imports everything itself (~2 s)."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import BinaryIO

from jlservice import disk, net, oom_score, prctl, users
from jlservice.errors import CannotStartNow, LaunchError, NotAnswering, NotebookDirNotAnswering
from jlservice.start import Secrets, Started, listening, private_dir, reserve
from jlservice.start.launcher import Launch


class ColdStart:
    """Start the launch's command as a new process."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.listening = listening.Listening()

    async def start(self, launch: Launch, secrets: Secrets) -> Started:
        await self.ready_to_start(launch)
        return self.start_now(launch, secrets)

    async def ready_to_start(self, launch: Launch) -> None:
        """Before any start the loop makes, cold or warm (a forked server enters the
        notebook dir too): the notebook dir answers, and /run has room."""
        await require_answering(launch)
        reserve.make_room(launch.private_dir)

    def start_now(self, launch: Launch, secrets: Secrets) -> Started:
        """Synchronous and light, so that `jlservice run` can start JupyterLab before its
        own heavier imports. Raises errors.CannotStartNow (worth retrying) or
        LaunchError (a configuration problem)."""
        return spawn(launch, self.prepare(launch, secrets))

    def prepare(self, launch: Launch, secrets: Secrets) -> tuple[int, ...]:
        """What every start needs first, cold or warm: its address, and the secrets in
        place. Returns the listening descriptors JupyterLab is to serve: with [kernels]
        survive_restarts, the ones jlservice holds across restarts; else none, and it binds
        the (free) port itself."""
        if launch.keep_kernels:
            fds = self.listening.hold(launch)
        else:
            self.listening.close()
            net.require_free(launch.ip, launch.port)
            fds = ()
        private_dir.prepare(launch, self.runtime_dir, *secrets)
        return fds

    def close(self) -> None:
        """jlservice stops: the port is let go."""
        self.listening.close()


async def require_answering(launch: Launch) -> None:
    """The notebook dir answers, or errors.WaitingFor. A network filesystem whose server is
    gone would hang the start where the new JupyterLab enters it, and the loop with it."""
    try:
        await asyncio.to_thread(disk.stat, launch.cwd, disk.ANSWER_WITHIN_S)
    except NotAnswering:
        raise NotebookDirNotAnswering(f"notebook_dir {disk.not_answering(launch.cwd)}") from None
    except OSError:
        pass  # missing or out of reach: the start itself says which, as the lab user


def spawn(launch: Launch, listen: tuple[int, ...]) -> Started:
    """Spawn a launch whose private dir is prepared, serving the descriptors `listen`."""
    began, began_monotonic = time.time(), time.monotonic()
    pid, output = detach(popen(launch, listen))
    return Started(pid, output, warm=False, began=began, began_monotonic=began_monotonic)


def _child_setup(parent_pid: int, cwd: str, errors: int):
    """What the child does after the uid switch, before exec (Popen runs preexec_fn then).

    It enters `cwd` as the lab user: Popen's own cwd= is entered before the switch, with
    root's rights, so a notebook dir the user swapped for a link to someone else's private
    directory would be entered, and readable through /proc/PID/cwd. A failure is reported
    on `errors` as its errno. PDEATHSIG is set here too, as a uid change would clear it.
    """

    def setup() -> None:
        # A network filesystem whose server is gone makes chdir wait in the kernel; only a
        # fatal signal ends that wait: SIGALRM's default action, within ANSWER_WITHIN_S. The
        # mark says what killed the child, for popen().
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.write(errors, _ENTERING)
        signal.alarm(math.ceil(disk.ANSWER_WITHIN_S))
        try:
            os.chdir(cwd)
        except OSError as exc:
            os.write(errors, str(exc.errno).encode())
            raise
        signal.alarm(0)
        os.write(errors, _ENTERED)
        prctl.die_with_parent()
        if os.getppid() != parent_pid:  # the supervisor died before we got here
            os._exit(1)

    return setup


def popen(launch: Launch, listen: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start JupyterLab; its stdout and stderr arrive on one pipe. It inherits the
    listening descriptors `listen` (under the same numbers)."""
    errors, report = os.pipe2(os.O_CLOEXEC)
    try:
        proc = _popen(launch, errors, report, listen)
        oom_score.unprotect_child(proc.pid)
        # Both ends of `report` are closed now (ours, and the child's at exec or death).
        if os.read(errors, 64) == _ENTERING:  # the alarm ended it in chdir, before exec
            proc.wait()
            raise NotebookDirNotAnswering(f"notebook_dir {disk.not_answering(launch.cwd)}")
        return proc
    finally:
        os.close(errors)


def _popen(
    launch: Launch, errors: int, report: int, listen: tuple[int, ...]
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            launch.argv,
            env={**launch.env, **listening.environ(listen)},
            pass_fds=listen,
            cwd="/",
            umask=launch.umask,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup(os.getpid(), launch.cwd, report),
            **identity(launch.account, launch.switch_user),
        )
    except subprocess.SubprocessError:  # raised in _child_setup: entering the notebook dir
        os.close(report)
        report = -1
        code = os.read(errors, 64).removeprefix(_ENTERING)
        raise _cannot_enter(launch, int(code or errno.EIO)) from None
    except PermissionError as exc:
        raise LaunchError(
            f"user {launch.account.name} may not execute {launch.argv[0]}: {exc.strerror}"
        ) from None
    except FileNotFoundError as exc:
        raise LaunchError(
            f"{exc.filename or launch.argv[0]}: no such file; check [lab] command"
        ) from None
    except OSError as exc:  # EAGAIN, ENOMEM…: the machine, not the configuration
        raise CannotStartNow(f"cannot start {launch.argv[0]}: {exc.strerror}") from None
    except ValueError as exc:  # e.g. an embedded NUL that validation let through
        raise LaunchError(f"cannot start {launch.argv[0]}: {exc}") from None
    finally:
        if report >= 0:
            os.close(report)


_ENTERING, _ENTERED = b"<", b">"  # written by the child around its chdir


def _cannot_enter(launch: Launch, code: int) -> Exception:
    why = f"user {launch.account.name} cannot enter notebook_dir {launch.cwd}: {os.strerror(code)}"
    if code in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return LaunchError(f"{why}; give {launch.account.name} access or fix [lab] notebook_dir")
    return CannotStartNow(why)


def identity(account: users.Account, switch_user: bool) -> dict[str, object]:
    """Popen's arguments that make a child run as `account` (none when it is us)."""
    if not switch_user:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}


def detach(popen: subprocess.Popen[bytes]) -> tuple[int, BinaryIO]:
    """JupyterLab's pid and output pipe, which the supervisor owns from now on: its Reaper
    reaps the process, so Popen must never wait on a pid that may be reused."""
    stdout = popen.stdout
    assert stdout is not None
    popen.stdout = None
    popen.returncode = 0
    return popen.pid, stdout
