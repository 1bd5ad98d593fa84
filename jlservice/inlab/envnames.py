"""The names the environments' kernels are listed under: valid, printable, and never one
that two environments (or one of JupyterLab's own kernelspecs) want.

Standard library only; imported by environments.py and kernelspecs.py (see environments.py
for how, and where it runs).
"""

from __future__ import annotations

import hashlib
import os


def printable(text):
    """`text` with control characters escaped: names reach the launcher and the log."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def digest(prefix):
    return hashlib.sha256(os.fsencode(prefix)).hexdigest()[:12]


def named(environments, taken=()):
    """({kernel name: (Environment, Kernel)}, {name: the prefixes that wanted it}).

    A name that two environments want, or that a kernelspec of JupyterLab's (`taken`: the
    user's own, its environment's) already has, is given to none of them: each such kernel
    is listed as NAME-<hash of its prefix>, which depends on nothing else (neither the
    search order nor what else exists), so another user's environment appearing can never
    take over a name a notebook uses (it may make it NAME-<hash>: that notebook then asks
    which kernel to start). A name that still collides is dropped.
    """
    wanted = {}
    for env in environments:
        for kernel in env.kernels:
            wanted.setdefault(kernel.name, []).append((env, kernel))
    collisions = {
        name: [env.prefix for env, _ in claims]
        for name, claims in wanted.items()
        if len(claims) > 1 or name in taken
    }
    final = {}
    for name, claims in wanted.items():
        for env, kernel in claims:
            listed = f"{name}-{digest(env.prefix)}" if name in collisions else name
            final.setdefault(listed, []).append((env, kernel))
    return {n: c[0] for n, c in final.items() if len(c) == 1 and n not in taken}, collisions


def collision_line(name, prefixes, taken):
    """One log line for the environments that want the kernel name `name`."""
    who = ", ".join(prefixes) + (" and a kernelspec of JupyterLab's" if name in taken else "")
    return printable(
        f"kernel name {name} is wanted by {who}: no environment gets it, each is listed as "
        f"{name}-<hash of its path>"
    )
