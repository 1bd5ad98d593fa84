"""[kernels] environments' paths and globs → the directories they name now, and the stamps
that tell when that (or anything else the Finder watches) changed.

Standard library only; imported by environments.py (see there for how, and where it runs).
"""

from __future__ import annotations

import fnmatch
import os
import stat

MAX_MATCHES = 1000  # paths a pattern, and all of them together, may yield: more is not a
# list of environments (the first in sorted order are kept, and the log says so)
MAX_SCAN = 100_000  # entries of one directory read at most


def stamp(path):
    """What changes when a directory's entries (or a file) change; None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, stat.S_IFMT(st.st_mode))


def stamps(paths):
    return {p: stamp(p) for p in paths}


def fresh(stamped, note):
    """Whether every path in `stamped` is as it was; `note` is told each before it is looked at."""
    for path, was in stamped.items():
        note(path)
        if stamp(path) != was:
            return False
    return True


def _nowhere(path):
    pass


def _is_magic(part):
    return any(c in part for c in "*?[")


def expand(pattern, note=_nowhere, log=_nowhere):
    """The directories `pattern` names now (at most MAX_MATCHES, the first in sorted order),
    and the directories whose listing decided it. `note` is called with each path before it
    is looked at, `log` with a line when paths were left out."""
    found = ["/"]
    listed = []
    for part in pattern.strip("/").split("/"):
        if not part:
            continue
        following = []
        for base in found:
            if not _is_magic(part):
                following.append(os.path.join(base, part))
                continue
            listed.append(base)
            note(base)
            following.extend(os.path.join(base, n) for n in _matching(base, part))
        found = sorted(following)
        if len(found) > MAX_MATCHES:
            log(f"{pattern}: more than {MAX_MATCHES} matches; the first are used")
            del found[MAX_MATCHES:]
    there = []
    for path in found:
        note(path)
        if os.path.isdir(path):
            there.append(path)
        else:  # a literal path that does not exist yet: its parent's listing tells when
            listed.append(os.path.dirname(path))
    return there, listed


def _matching(base, part):
    names = []
    try:
        with os.scandir(base) as entries:
            for count, entry in enumerate(entries):
                if count >= MAX_SCAN:
                    break
                if fnmatch.fnmatchcase(entry.name, part) and not (
                    entry.name.startswith(".") and not part.startswith(".")
                ):
                    names.append(entry.name)
    except OSError:
        pass
    return names
