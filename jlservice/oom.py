"""Who the OOM killer takes first: a kernel, never jlservice or JupyterLab.

jlservice lowers its own oom_score_adj at start-up (root; under the unit, systemd's
OOMScoreAdjust= has done it already); JupyterLab and the warm parent inherit it. jlservice's
kernel manager (inlab/kernels.py) raises each kernel's own value as it launches it, before
the kernel runs anything, and what the kernel starts inherits that. A terminal's shell, or
anything else JupyterLab forks, is raised too. Lowering is for root with CAP_SYS_RESOURCE;
raising is for anyone, so the kernel manager, as the lab user, can do it.
"""

from __future__ import annotations

SERVICE = -900  # jlservice, JupyterLab, the warm parent
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
    """`pid`'s oom_score_adj to `value`; why it could not, or None."""
    return _write(str(pid), value)


def _write(pid: str, value: int) -> str | None:
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as exc:
        return f"cannot set /proc/{pid}/oom_score_adj to {value}: {exc.strerror}"
    return None
