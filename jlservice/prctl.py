"""The two prctl(2) calls jlservice makes, through libc."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def become_subreaper() -> None:
    """Orphaned descendants (kernels of a dead JupyterLab) are re-parented to us, not init."""
    if _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Get `sig` when the parent dies (a uid change clears it: call it after the switch)."""
    _prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
