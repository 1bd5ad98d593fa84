"""Kernels from every environment [kernels] environments names, activated as their owners expect.

Runs inside JupyterLab as the module `jlservice_kernelspecs` (ServerApp.
kernel_spec_manager_class), from the directory jlservice puts first on JupyterLab's
PYTHONPATH, which importing it takes out of os.environ again (kernels and terminals never
see it). EnvironmentKernelSpecManager lists JupyterLab's kernelspecs as before (the user's
`ipykernel install --user` ones, its own environment's) and, besides them, one kernelspec
per kernel each environment has (jlservice_environments finds them, as the lab user). Such
a kernelspec's argv starts with jlservice_activate, which activates the environment in the
kernel's own launch and then becomes the kernel.

Listing costs a few stat() calls per environment while nothing changed: the Finder only
looks again where a directory it watches changed.
"""

import os
import sys

import jlservice_environments as environments
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from traitlets import List, Unicode

HERE = os.path.dirname(os.path.abspath(__file__))
ACTIVATE = os.path.join(HERE, "jlservice_activate.py")


def _scrub(env):
    """PYTHONPATH without this module's directory."""
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    left = [p for p in parts if os.path.abspath(p) != HERE]
    if left:
        env["PYTHONPATH"] = os.pathsep.join(left)
    else:
        env.pop("PYTHONPATH", None)


_scrub(os.environ)


def wrapped_argv(env, kernel):
    """The kernel's argv, started through jlservice_activate by JupyterLab's interpreter
    (-I -S: nothing of the environment's or the user's site is imported by it)."""
    head = [sys.executable, "-I", "-S", ACTIVATE, env.kind, env.prefix, env.name, "--"]
    return [*head, *kernel.argv]


class EnvironmentKernelSpecManager(KernelSpecManager):
    environments = List(
        Unicode(), config=True, help="jlservice's [kernels] environments: paths and globs"
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._finder = environments.Finder(self.environments, skip=[sys.prefix], log=self._problem)
        self._specs = {}
        self._built = None  # what _specs was built from: the finder's generation, the taken names
        self._collisions = {}  # those said in the log

    def _problem(self, line):
        self.log.warning("jlservice: %s", line)

    def _own(self):
        """{name: KernelSpec} of the environments' kernels, rebuilt when they changed.
        JupyterLab's own kernelspecs (the user's, its environment's) keep their names."""
        found = self._finder.find()
        taken = frozenset(super().find_kernel_specs())
        if (self._finder.generation, taken) != self._built:
            kernels, collisions = environments.named(found, taken)
            allowed = self.allowed_kernelspecs
            self._specs = {
                name: self._spec(env, kernel)
                for name, (env, kernel) in kernels.items()
                if not allowed or name in allowed
            }
            self._built = (self._finder.generation, taken)
            for name, prefixes in collisions.items():
                if self._collisions.get(name) != prefixes:
                    self._problem(environments.collision_line(name, prefixes, taken))
            self._collisions = collisions
        return self._specs

    def _spec(self, env, kernel):
        label = "conda env" if env.kind == "conda" else "venv"
        metadata = dict(kernel.spec.get("metadata") or {})
        metadata["jlservice_environment"] = env.prefix
        return self.kernel_spec_class(
            resource_dir=kernel.resource_dir,
            argv=wrapped_argv(env, kernel),
            display_name=environments.printable(f"{kernel.display_name} [{label}:{env.name}]"),
            language=kernel.language,
            env=kernel.spec.get("env") or {},
            metadata=metadata,
            interrupt_mode=kernel.spec.get("interrupt_mode", "signal"),
        )

    def find_kernel_specs(self):
        specs = super().find_kernel_specs()
        specs.update({name: spec.resource_dir for name, spec in self._own().items()})
        return specs

    def get_kernel_spec(self, kernel_name):
        spec = self._own().get(kernel_name)
        return spec if spec is not None else super().get_kernel_spec(kernel_name)

    def get_all_specs(self):
        """What GET api/kernelspecs lists: the environments are looked at once, not once
        per kernel as the inherited loop would."""
        own = self._own()
        listed = {}
        for name in super().find_kernel_specs():
            try:
                spec = super().get_kernel_spec(name)
            except NoSuchKernel:
                continue
            except Exception:
                self.log.warning("Error loading kernelspec %r", name, exc_info=True)
                continue
            listed[name] = {"resource_dir": spec.resource_dir, "spec": spec.to_dict()}
        for name, spec in own.items():
            listed[name] = {"resource_dir": spec.resource_dir, "spec": spec.to_dict()}
        return listed
