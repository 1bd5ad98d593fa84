"""Every exception jlservice raises on purpose, in one place, with what each means.

Each str() is one line for a person: what is wrong and what to do. Kept free of imports so
that any module, however light (`jlservice token`), can use it.
"""

from __future__ import annotations

from collections.abc import Sequence


class ConfigError(Exception):
    """The configuration file (or a file it names) is wrong: exit 78 at start, a rejected
    reload while running."""

    def __init__(self, message: str) -> None:
        # Names and values come from the file: control characters (a newline in a quoted
        # key) must not break the one-line promise.
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


class StateError(Exception):
    """The state file cannot be used (missing, unreadable, damaged)."""


class LaunchError(Exception):
    """JupyterLab cannot be started as configured: a configuration problem (exit 78)."""


class CannotStartNow(Exception):
    """JupyterLab cannot start right now (port in use, fork failed…): retried with backoff."""


class WaitingFor(CannotStartNow):
    """Something outside jlservice that clears by itself stops the start: retried until it
    clears, never counted as a failed start, never given up on. `what` is what is waited
    for, for people; `found` and `cleared` are the log events when it is found, and gone."""

    what, found, cleared = "something outside jlservice", "lab_start_waits", "lab_start_unblocked"


class PortInUse(WaitingFor):
    """Another program holds JupyterLab's port."""

    what, found, cleared = "JupyterLab's port", "lab_port_in_use", "lab_port_free"


class NotebookDirNotAnswering(WaitingFor):
    """The notebook dir's filesystem does not answer (a network filesystem whose server is
    gone): JupyterLab would hang entering it."""

    what, found, cleared = "the notebook dir", "notebook_dir_not_answering", "notebook_dir_answers"


class NotAnswering(TimeoutError):
    """A filesystem did not answer in time (a network filesystem whose server is gone): the
    call still waits in the kernel, in a thread of its own, and the caller goes on."""


class CertError(Exception):
    """A certificate or key that cannot be used."""


class InstallError(Exception):
    """Install or uninstall cannot go on; `done` says what was already done before it
    stopped."""

    def __init__(self, message: str, done: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.done = list(done)


class CommandError(Exception):
    """A command-line command fails; `status` is its exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Halt(Exception):
    """Not an error: the supervisor loop's one way out, with the exit status `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
