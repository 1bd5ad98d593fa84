"""Kernels from every environment [kernels] environments names, activated as their owners expect.

Runs inside JupyterLab as the module `jlservice_kernelspecs` (ServerApp.
kernel_spec_manager_class), from the directory jlservice puts first on JupyterLab's
PYTHONPATH, which jlservice_notices (inlab/notices) takes out of os.environ again once
loaded (kernels and terminals never see it). EnvironmentKernelSpecManager lists
JupyterLab's kernelspecs as before (the user's `ipykernel install --user` ones, its own
environment's) and, besides them, one kernelspec per kernel each environment has
(jlservice_environments finds them, as the lab user). Such a kernelspec's argv starts with
jlservice_activate, which activates the environment in the kernel's own launch and then
becomes the kernel.

Listing costs a few stat() calls per environment while nothing changed: the Finder only
looks again where a directory it watches changed. It looks in a thread of its own, never on
JupyterLab's event loop: an environment on a network filesystem whose server is gone (or
a FUSE mount that never answers) is named in the log, and the launcher lists the
environments as last found until it answers again.

Loaded as a server extension too: that thread then also looks every LOOK_EVERY_S, and a
change of the environments' kernels is emitted as the event CHANGED, on which jlservice's
labextension (inlab/labextension/) has the launcher ask for the kernelspecs again.
"""

import asyncio
import os
import queue
import sys
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_for

import jlservice_environments as environments
import jlservice_envnames as envnames
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from traitlets import List, Unicode

HERE = os.path.dirname(os.path.abspath(__file__))
ACTIVATE = os.path.join(HERE, "jlservice_activate.py")
ANSWER_WITHIN_S = 2.0  # a listing waits that long for the environments, at most
LOOK_EVERY_S = 2.0  # a look unasked, so that a new environment is in the launcher at once
CHANGED = "https://jlservice.invalid/events/kernelspecs/v1"  # the labextension's name for it
CHANGED_SCHEMA = {
    "$id": CHANGED,
    "version": "1",
    "title": "jlservice: the environments' kernels changed",
    "description": "An environment of [kernels] environments appeared, went or changed: "
    "the front end asks for the kernelspecs again.",
    "type": "object",
    "properties": {
        "environments": {
            "type": "integer",
            "title": "environments",
            "description": "How many environments are found now.",
        }
    },
    "required": ["environments"],
}


def wrapped_argv(env, kernel):
    """The kernel's argv, started through jlservice_activate by JupyterLab's interpreter
    (-I -S: nothing of the environment's or the user's site is imported by it)."""
    head = [sys.executable, "-I", "-S", ACTIVATE, env.kind, env.prefix, env.name, "--"]
    return [*head, *kernel.argv]


class Looking:
    """finder.find() in one daemon thread of its own. A caller waits for it at most
    ANSWER_WITHIN_S, then gets what was found last; while a look is hung, callers get that
    at once and no other look is started: a dead server costs one thread, however long.
    Once watched (watch()), it also looks unasked every LOOK_EVERY_S and calls `changed`
    (on that thread) when the environments differ from the last look's."""

    def __init__(self, finder, log):
        self._finder = finder
        self._log = log
        self._lock = threading.Lock()
        self._asked = queue.SimpleQueue()
        self._thread = None
        self._pending = None  # the look under way
        self._hung = None  # the look said not to answer
        self._changed = None
        self.last = (-1, [])  # (the finder's generation, the environments) found last

    def watch(self, changed):
        """Look every LOOK_EVERY_S from now on; `changed(environments)` after a change."""
        self._changed = changed
        self._ask()

    def now(self):
        """The environments, waiting for them on this thread."""
        answer = self._ask()
        if answer is not self._hung:
            wait_for([answer], timeout=ANSWER_WITHIN_S)
        return self._result(answer)

    async def soon(self):
        """The environments, waiting for them without blocking the event loop."""
        answer = self._ask()
        if answer is not self._hung:
            await asyncio.wait([asyncio.wrap_future(answer)], timeout=ANSWER_WITHIN_S)
        return self._result(answer)

    def _ask(self, unasked=False):
        with self._lock:
            if unasked and self._pending is not None and not self._pending.done():
                return None  # a caller's look is under way, or hung
            if self._pending is None or self._pending.done():
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="jlservice-environments", daemon=True
                    )
                    self._thread.start()
                self._pending = Future()
                self._asked.put(self._pending)
            return self._pending

    def _serve(self):
        seen = None  # the generation the last look found
        while True:
            try:
                answer = self._asked.get(timeout=LOOK_EVERY_S if self._changed else None)
            except queue.Empty:
                answer = self._ask(unasked=True)
                if answer is None:
                    continue
                answer = self._asked.get()
            try:
                found = self._finder.find()
            except BaseException as exc:  # whatever it is, it is the caller's to say
                answer.set_exception(exc)
                continue
            answer.set_result((self._finder.generation, found))
            if self._changed is not None and seen not in (None, self._finder.generation):
                try:
                    self._changed(found)
                except Exception as exc:
                    self._log(
                        f"telling the front end that the environments changed failed: {exc!r}"
                    )
            seen = self._finder.generation

    def _result(self, answer):
        if self._hung is not None and self._hung.done():
            self._hung = None
            self._log("the environments answer again")
        if not answer.done():
            if self._hung is not answer:
                self._hung = answer
                self._log(
                    f"environment {self._finder.at} does not answer within "
                    f"{ANSWER_WITHIN_S:g} s (a network filesystem whose server is gone?): the "
                    "environments are listed as last found until it answers"
                )
            return self.last
        try:
            self.last = answer.result()
        except Exception as exc:
            self._log(f"looking for the environments failed: {exc!r}")
        return self.last


class EnvironmentKernelSpecManager(KernelSpecManager):
    environments = List(
        Unicode(), config=True, help="jlservice's [kernels] environments: paths and globs"
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        finder = environments.Finder(self.environments, skip=[sys.prefix], log=self._problem)
        self._looking = Looking(finder, self._problem)
        self._specs = {}
        self._built = None  # what _specs was built from: the finder's generation, the taken names
        self._collisions = {}  # those said in the log

    def _problem(self, line):
        self.log.warning("jlservice: %s", line)

    def watch(self, changed):
        """Look at the environments every LOOK_EVERY_S; `changed(environments)` (on the
        looking thread) when their kernels changed."""
        self._looking.watch(changed)

    def _own(self, found, taken):
        """{name: KernelSpec} of the environments' kernels (`found`: the finder's generation
        and environments), rebuilt when they changed. JupyterLab's own kernelspecs (`taken`:
        the user's, its environment's) keep their names."""
        taken = frozenset(taken)
        if (found[0], taken) != self._built:
            kernels, collisions = envnames.named(found[1], taken)
            allowed = self.allowed_kernelspecs
            self._specs = {
                name: self._spec(env, kernel)
                for name, (env, kernel) in kernels.items()
                if not allowed or name in allowed
            }
            self._built = (found[0], taken)
            for name, prefixes in collisions.items():
                if self._collisions.get(name) != prefixes:
                    self._problem(envnames.collision_line(name, prefixes, taken))
            self._collisions = collisions
        return self._specs

    def _spec(self, env, kernel):
        label = "conda env" if env.kind == "conda" else "venv"
        metadata = dict(kernel.spec.get("metadata") or {})
        metadata["jlservice_environment"] = env.prefix
        return self.kernel_spec_class(
            resource_dir=kernel.resource_dir,
            argv=wrapped_argv(env, kernel),
            display_name=envnames.printable(f"{kernel.display_name} [{label}:{env.name}]"),
            language=kernel.language,
            env=kernel.spec.get("env") or {},
            metadata=metadata,
            interrupt_mode=kernel.spec.get("interrupt_mode", "signal"),
        )

    def find_kernel_specs(self):
        specs = super().find_kernel_specs()
        own = self._own(self._looking.now(), specs)
        specs.update({name: spec.resource_dir for name, spec in own.items()})
        return specs

    def get_kernel_spec(self, kernel_name):
        """JupyterLab's own, else the environment's kernel as last listed (a kernel start
        never waits for the environments), else as found now."""
        try:
            return super().get_kernel_spec(kernel_name)
        except NoSuchKernel:
            pass
        spec = self._specs.get(kernel_name)
        if spec is None:
            taken = super().find_kernel_specs()
            spec = self._own(self._looking.now(), taken).get(kernel_name)
        if spec is None:
            raise NoSuchKernel(kernel_name)
        return spec

    async def get_all_specs(self):
        """What GET api/kernelspecs lists (jupyter_server awaits it): the environments are
        looked at once, not once per kernel as the inherited loop would."""
        found = await self._looking.soon()
        taken = super().find_kernel_specs()
        listed = {}
        for name in taken:
            try:
                spec = super().get_kernel_spec(name)
            except NoSuchKernel:
                continue
            except Exception:
                self.log.warning("Error loading kernelspec %r", name, exc_info=True)
                continue
            listed[name] = {"resource_dir": spec.resource_dir, "spec": spec.to_dict()}
        for name, spec in self._own(found, taken).items():
            listed[name] = {"resource_dir": spec.resource_dir, "spec": spec.to_dict()}
        return listed


def _jupyter_server_extension_points():
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp):
    """Emit CHANGED (on the event loop, as jupyter_events needs) whenever the environments'
    kernels change, for jlservice's labextension."""
    manager = serverapp.kernel_spec_manager
    if not isinstance(manager, EnvironmentKernelSpecManager):
        return
    events = serverapp.event_logger
    events.register_event_schema(CHANGED_SCHEMA)

    def emit(found):
        events.emit(schema_id=CHANGED, data={"environments": len(found)})

    manager.watch(lambda found: serverapp.io_loop.add_callback(emit, found))
