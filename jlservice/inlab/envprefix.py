"""One prefix of [kernels] environments: is it a conda environment or a venv, its name,
its kernels (ipykernel, or the kernelspecs it ships in share/jupyter/kernels), what is wrong
with it, and the paths whose change means it must be looked at again.

Standard library only; imported by environments.py (see there for how, and where it runs).
It only reads: directory listings, stat(), and kernel.json files of at most MAX_JSON bytes.
It never runs anything an environment holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat

MAX_JSON = 64 << 10  # a kernel.json is a few hundred bytes
MAX_KERNELS = 1000  # kernel directories of one environment read at most
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
    return shutil.which(program) is not None


def _shipped(prefix):
    """{kernel dir name: (dir, kernel.json's data or the ValueError)} of share/jupyter/kernels."""
    root = os.path.join(prefix, "share", "jupyter", "kernels")
    try:
        names = sorted(os.listdir(root))[:MAX_KERNELS]
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
