"""Who the OOM killer takes first: a kernel, never jlservice or JupyterLab.

jlservice (root) lowers its own oom_score_adj to SERVICE at start-up, and writes each child's
value itself, as root: JupyterLab's and the warm parent's (LAB) right after it spawns them,
each kernel's (KERNEL) as the placer verifies it. A value root writes with CAP_SYS_RESOURCE is
also the floor below which the process, and all it forks, may never go back (the kernel's
oom_score_adj_min): a notebook cannot lower its kernel under KERNEL, nor anything JupyterLab
starts under LAB. jlservice's kernel manager also raises each kernel and what JupyterLab
forks in Python (a terminal's shell) to KERNEL, as the lab user: anyone may raise.
"""

from __future__ import annotations

SERVICE = -900  # jlservice alone
LAB = 0  # JupyterLab, the warm parent, and what they start
KERNEL = 500  # each kernel and everything it starts


def current(pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/oom_score_adj", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def protect_self() -> str | None:
    """Lower jlservice's oom_score_adj to SERVICE; why it could not, or None."""
    now = current()
    if now is not None and now <= SERVICE:
        return None
    return _write("self", SERVICE)


def set_score(pid: int, value: int) -> str | None:
    """`pid`'s oom_score_adj to `value`, and (written as root) its floor; why not, or None."""
    return _write(str(pid), value)


def unprotect_child(pid: int) -> None:
    """A child just spawned (JupyterLab, the warm parent) from SERVICE up to LAB, its floor
    locked there: it must not inherit jlservice's protection. Before it forks anything: its
    interpreter is still starting. Nothing to do where jlservice is not protected."""
    now = current()
    if now is not None and now < LAB:
        set_score(pid, LAB)  # fails only if it is gone already


def _write(pid: str, value: int) -> str | None:
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        return f"cannot set /proc/{pid}/oom_score_adj to {value}: {exc.strerror}"
    return None
