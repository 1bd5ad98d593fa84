"""Find the conda environments and venvs that [kernels] environments names, and their kernels.

Standard library only. Runs as the lab user: inside JupyterLab (as `jlservice_environments`,
for jlservice's kernelspec manager) and in `jlservice doctor` (as `python -I -S
environments.py PATTERN…`, which prints what it found as JSON). It only reads:
directory listings, stat(), and kernel.json files of at most MAX_JSON bytes. It never runs
anything an environment holds.

A Finder keeps what it found and, when asked again, only stat()s the directories that
decide it (those a glob listed, and per environment its top, bin/, site-packages/,
conda-meta/ and kernel directories): an environment created, removed or changed is seen at
the next listing, and an unchanged machine costs a few hundred stat() calls, no polling.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import stat
import sys

MAX_JSON = 64 << 10  # a kernel.json is a few hundred bytes
MAX_MATCHES = 1000  # paths a pattern, and all of them together, may yield: more is not a
# list of environments (the first in sorted order are kept, and the log says so)
MAX_SCAN = 100_000  # entries of one directory read at most
PYTHON_NAMES = ("python", "python3")
_NOT_NAME = re.compile(r"[^a-z0-9._-]+")


class Kernel:
    """One kernel of an environment: what a kernelspec needs, argv not yet wrapped."""

    def __init__(self, name, display_name, language, argv, resource_dir, spec):
        self.name = name
        self.display_name = display_name
        self.language = language
        self.argv = argv
        self.resource_dir = resource_dir
        self.spec = spec  # the rest of its kernel.json: env, metadata, interrupt_mode

    def as_dict(self):
        return {
            "name": self.name,
            "display_name": self.display_name,
            "language": self.language,
            "argv": self.argv,
        }


class Environment:
    def __init__(self, prefix, kind, name, owner=None):
        self.prefix = prefix
        self.kind = kind  # "conda" or "venv"
        self.name = name
        self.owner = owner  # the uid owning its top directory
        self.kernels = []
        self.problems = []  # one line each: what is wrong, for the log and the doctor

    def as_dict(self, names=None):
        """`names`: {id(kernel): the name it is listed under} (see named())."""
        kernels = []
        for kernel in self.kernels:
            kernels.append(kernel.as_dict())
            kernels[-1]["name"] = kernel.name if names is None else names.get(id(kernel))
        return {
            "prefix": self.prefix,
            "kind": self.kind,
            "name": self.name,
            "owner": self.owner,
            "kernels": kernels,
            "problems": self.problems,
        }


def printable(text):
    """`text` with control characters escaped: names reach the launcher and the log."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _stamp(path):
    """What changes when a directory's entries (or a file) change; None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, stat.S_IFMT(st.st_mode))


def _stamps(paths):
    return {p: _stamp(p) for p in paths}


def _fresh(stamps, note):
    for path, stamp in stamps.items():
        note(path)
        if _stamp(path) != stamp:
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
            log(printable(f"{pattern}: more than {MAX_MATCHES} matches; the first are used"))
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


def _read_json(path):
    """A small JSON object from a regular file; ValueError saying what is wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        raw = f.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise ValueError(f"larger than {MAX_JSON >> 10} KiB")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not valid JSON ({getattr(exc, 'msg', 'too deep')})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def kind_of(prefix):
    if os.path.isdir(os.path.join(prefix, "conda-meta")):
        return "conda"
    if os.path.isfile(os.path.join(prefix, "pyvenv.cfg")):
        return "venv"
    return None


def env_name(prefix, kind):
    """conda's name for it: "base" for an install's root, else the directory's name. A
    prefix inside an envs/ is an environment, never a root, whatever it holds."""
    inside_envs = "envs" in prefix.strip("/").split("/")[:-1]
    if kind == "conda" and not inside_envs and os.path.isdir(os.path.join(prefix, "envs")):
        return "base"
    return os.path.basename(prefix.rstrip("/")) or prefix


def spec_name(kind, name, kernel):
    """A kernelspec name in nb_conda_kernels' style (conda-env-NAME-py), valid for
    jupyter_client ([a-z0-9._-])."""
    head = "conda-env" if kind == "conda" else "venv"
    return _NOT_NAME.sub("_", f"{head}-{name}-{kernel}".lower())


def _site_packages(prefix):
    lib = os.path.join(prefix, "lib")
    try:
        names = sorted(n for n in os.listdir(lib) if n.startswith("python"))
    except OSError:
        return []
    return [os.path.join(lib, n, "site-packages") for n in names]


def _python(prefix):
    for name in PYTHON_NAMES:
        path = os.path.join(prefix, "bin", name)
        if os.access(path, os.X_OK):
            return path
    return None


def _has_ipykernel(site_dirs):
    return any(os.path.isfile(os.path.join(d, "ipykernel_launcher.py")) for d in site_dirs)


def _is_ipykernel(argv):
    return "ipykernel_launcher" in argv or "ipykernel" in argv


def _program_missing(prefix, program):
    if "/" in program:
        return not os.access(program, os.X_OK)
    return not os.access(os.path.join(prefix, "bin", program), os.X_OK) and not _on_path(program)


def _on_path(program):
    import shutil

    return shutil.which(program) is not None


def _shipped(prefix):
    """{kernel dir name: (dir, kernel.json's data or the ValueError)} of share/jupyter/kernels."""
    root = os.path.join(prefix, "share", "jupyter", "kernels")
    try:
        names = sorted(os.listdir(root))[:MAX_MATCHES]
    except OSError:
        return {}
    found = {}
    for name in names:
        path = os.path.join(root, name, "kernel.json")
        if not os.path.lexists(path):
            continue
        try:
            found[name] = (os.path.join(root, name), _read_json(path))
        except ValueError as exc:
            found[name] = (os.path.join(root, name), exc)
    return found


def _watched(prefix, site_dirs, shipped):
    kernels = os.path.join(prefix, "share", "jupyter", "kernels")
    paths = [prefix, os.path.join(prefix, "bin"), os.path.join(prefix, "lib"), kernels]
    paths += [os.path.join(prefix, "conda-meta"), *site_dirs]
    for directory, _ in shipped.values():
        paths += [directory, os.path.join(directory, "kernel.json")]
    return paths


def _extras(data):
    """What else of a kernel.json a KernelSpec takes, where it has the right shape."""
    extras = {}
    env = data.get("env")
    if isinstance(env, dict) and all(isinstance(v, str) for v in env.values()):
        extras["env"] = env
    if isinstance(data.get("metadata"), dict):
        extras["metadata"] = data["metadata"]
    if data.get("interrupt_mode") in ("signal", "message"):
        extras["interrupt_mode"] = data["interrupt_mode"]
    return extras


def inspect(prefix):
    """(Environment or None when `prefix` is no environment, the paths that decided it)."""
    kind = kind_of(prefix)
    if kind is None:
        return None, [prefix]
    try:
        owner = os.stat(prefix).st_uid
    except OSError:
        owner = None
    env = Environment(prefix, kind, env_name(prefix, kind), owner)
    site_dirs = _site_packages(prefix)
    shipped = _shipped(prefix)
    python = _python(prefix)
    has_python_kernel = False
    for dirname, (directory, data) in shipped.items():
        where = f"share/jupyter/kernels/{dirname}/kernel.json"
        if isinstance(data, ValueError):
            env.problems.append(f"{where}: {data}; kernel skipped")
            continue
        argv = data.get("argv")
        display = data.get("display_name")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            env.problems.append(f"{where}: argv is not a list of strings; kernel skipped")
            continue
        if not isinstance(display, str):
            display = dirname
        if _is_ipykernel(argv) and os.path.basename(argv[0]).startswith("python"):
            has_python_kernel = True  # said once, here, when its python is missing
            if python is None:
                env.problems.append("python missing: no bin/python; Python kernel skipped")
                continue
            argv = [python, *argv[1:]]
            kernel_key = "py"
        elif _program_missing(prefix, argv[0]):
            env.problems.append(f"{where}: {argv[0]} not found; kernel skipped")
            continue
        else:
            kernel_key = dirname
        spec = _extras(data)
        language = data.get("language") if isinstance(data.get("language"), str) else ""
        name = spec_name(kind, env.name, kernel_key)
        _add(env, Kernel(name, display, language, argv, directory, spec), where)
    if not has_python_kernel and _has_ipykernel(site_dirs):
        if python is None:
            env.problems.append("python missing: ipykernel is installed but bin/python is not")
        else:
            argv = [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            resources = os.path.join(site_dirs[0], "ipykernel", "resources")
            name = spec_name(kind, env.name, "py")
            kernel = Kernel(name, "Python 3 (ipykernel)", "python", argv, resources, {})
            _add(env, kernel, "ipykernel")
    return env, _watched(prefix, site_dirs, shipped)


def _add(env, kernel, where):
    if any(k.name == kernel.name for k in env.kernels):
        env.problems.append(f"{where}: kernel name {kernel.name} is another's too; skipped")
    else:
        env.kernels.append(kernel)


def _digest(prefix):
    return hashlib.sha256(os.fsencode(prefix)).hexdigest()[:12]


def named(environments, taken=()):
    """({kernel name: (Environment, Kernel)}, {name: the prefixes that wanted it}).

    A name that two environments want, or that a kernelspec of JupyterLab's (`taken`: the
    user's own, its environment's) already has, is given to none of them: each such kernel
    is listed as NAME-<hash of its prefix>, which depends on nothing else (neither the
    search order nor what else exists), so another user's environment appearing can never
    take over, or rename, a name a notebook uses. A name that still collides is dropped.
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
            listed = f"{name}-{_digest(env.prefix)}" if name in collisions else name
            final.setdefault(listed, []).append((env, kernel))
    return {n: c[0] for n, c in final.items() if len(c) == 1 and n not in taken}, collisions


def collision_line(name, prefixes, taken):
    """One log line for the environments that want the kernel name `name`."""
    who = ", ".join(prefixes) + (" and a kernelspec of JupyterLab's" if name in taken else "")
    return printable(
        f"kernel name {name} is wanted by {who}: no environment gets it, each is listed as "
        f"{name}-<hash of its path>"
    )


class Finder:
    """The environments of `patterns`, found again only where a watched directory changed.

    `skip`: prefixes whose kernels JupyterLab lists anyway (its own environment). `log`:
    called with one line per problem, when an environment is (re)inspected.
    """

    def __init__(self, patterns, skip=(), log=None):
        self.patterns = list(patterns)
        self.skip = {os.path.realpath(p) for p in skip}
        self.log = log or (lambda line: None)
        self._glob_stamps = None  # what decided the list of candidates
        self._candidates = []
        self._inspected = {}  # prefix: (Environment or None, stamps)
        self._environments = []
        self.generation = 0  # +1 whenever what find() returns changed
        self.at = None  # the path being looked at (the one that hangs, if find() does)

    def _note(self, path):
        self.at = path

    def find(self):
        """The environments found, each with its kernels and problems."""
        changed = False
        if self._glob_stamps is None or not _fresh(self._glob_stamps, self._note):
            self._candidates, self._glob_stamps = self._expand()
            changed = True
        inspected = {}
        for prefix in self._candidates:
            known = self._inspected.get(prefix)
            if known is None or not _fresh(known[1], self._note):
                self.at = prefix
                env, paths = inspect(prefix)
                known = (env, _stamps(paths))
                changed = True
                for problem in env.problems if env else ():
                    self.log(printable(f"environment {prefix}: {problem}"))
            inspected[prefix] = known
        if changed or inspected.keys() != self._inspected.keys():
            self._inspected = inspected
            self._environments = [e for e, _ in inspected.values() if e is not None]
            self.generation += 1
        return self._environments

    def _expand(self):
        candidates, listed = {}, []
        for pattern in self.patterns:
            found, decided = expand(pattern, self._note, self.log)
            listed.extend(decided)
            for prefix in found:
                self.at = prefix
                if prefix not in candidates and os.path.realpath(prefix) not in self.skip:
                    candidates[prefix] = None
        if len(candidates) > MAX_MATCHES:
            self.log(f"more than {MAX_MATCHES} environments; the first are used")
        return list(candidates)[:MAX_MATCHES], _stamps(dict.fromkeys(listed))


def main(argv):
    """`python -I -S environments.py [--skip PREFIX]… PATTERN…` (jlservice doctor): what
    the lab user finds, as JSON."""
    skip = []
    while len(argv) >= 2 and argv[0] == "--skip":
        skip.append(argv[1])
        argv = argv[2:]
    environments = Finder(argv, skip=skip).find()
    names = {id(kernel): name for name, (_, kernel) in named(environments)[0].items()}
    json.dump([e.as_dict(names) for e in environments], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
