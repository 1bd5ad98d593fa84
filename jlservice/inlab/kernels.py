"""Kernels that outlive the JupyterLab that started them ([kernels] survive_restarts).

Runs inside JupyterLab (jupyter_server >= 2.10, jupyter_client >= 8) as the module
`jlservice_kernels`, from a directory jlservice puts first on JupyterLab's PYTHONPATH.
Importing it takes that directory out of os.environ again, so kernels and terminals never
have it on their path or in their environment.

- KeepingProvisioner: the local provisioner, with kernels launched independent (no
  JPY_PARENT_PID: ipykernel then does not exit with this server), their oom_score_adj raised
  as they start (the OOM killer takes a kernel before this server), and their output on
  jlservice's kernel-output FIFO, which jlservice reads for as long as it runs, so that no
  kernel dies of SIGPIPE when this server is gone. It also adopts a surviving kernel by
  pid, through a pidfd: this server is not its parent (jlservice, the child subreaper, is,
  and reaps it), and a pidfd tells of the exit without polling and pins the pid.
- KeepingKernelManager: a ServerKernelManager with that provisioner.
- KeepingMappingKernelManager: at start-up, registers each kernel jlservice hands over (the
  handover file jlservice writes) under its own id, with activity tracking, culling and
  auto-restart as for a kernel it started; at exit it leaves the kernels running when the
  handover says to keep them, which jlservice says just before it stops this server for a
  restart (and never when it died: its parent-death signal is a SIGTERM as well).
- The module is also a server extension: it serves the listening socket jlservice holds
  across restarts (JLSERVICE_LISTEN_FDS) instead of binding the port.

jlservice decides which processes are kept and ends those not adopted in time; this code
only adopts what it is handed, after checking that the pid still names the kernel's
connection file.
"""

import asyncio
import json
import os
import select
import signal
import time

from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
)
from tornado.ioloop import IOLoop
from traitlets import Integer, Unicode, default

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_FILE = 1 << 20  # the handover and a connection file are a few hundred bytes each


def _without_here(path_list):
    """PYTHONPATH without this module's directory (None when nothing else is left)."""
    parts = [p for p in path_list.split(os.pathsep) if p and os.path.abspath(p) != HERE]
    return os.pathsep.join(parts) or None


def _scrub(env):
    left = _without_here(env.get("PYTHONPATH", ""))
    if left is None:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = left


_scrub(os.environ)


def _read_json(path):
    with open(path, "rb") as f:
        data = json.loads(f.read(MAX_FILE))
    return data if isinstance(data, dict) else {}


def _names(pid, connection_file):
    """Whether process `pid` runs with `connection_file` on its command line."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read(MAX_FILE).split(b"\0")
    wanted = {os.fsencode(connection_file), os.fsencode(os.path.realpath(connection_file))}
    return any(arg in wanted for arg in argv)


def _raise_oom_score(pid, value):
    """Raise `pid`'s oom_score_adj to `value` (anyone may raise it; lowering needs root)."""
    if value is None:
        return
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        pass  # gone already, or /proc is read-only here: the kernel runs on unranked


def _environ(pid):
    """The environment `pid` was started with (what a restart of it starts with again)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = f.read(MAX_FILE).split(b"\0")
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


class AdoptedProcess:
    """What LocalProvisioner needs of a Popen, for a kernel this server did not start."""

    stdin = stdout = stderr = None

    def __init__(self, pid, pidfd):
        self.pid = pid
        self.pidfd = pidfd
        self.returncode = None

    def poll(self):
        """None while it runs. Its exit status is its parent's (jlservice's) to know."""
        if self.returncode is None and select.select([self.pidfd], [], [], 0)[0]:
            self.returncode = 0
        return self.returncode

    def wait(self, timeout=None):
        select.select([self.pidfd], [], [], timeout)
        return self.poll()

    async def exited(self):
        """Returns once the process has exited: the pidfd becomes readable, no polling."""
        if self.poll() is not None:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(self.pidfd, lambda: done.done() or done.set_result(None))
        try:
            await done
        finally:
            loop.remove_reader(self.pidfd)
        self.poll()

    def send_signal(self, signum):
        if self.poll() is None:  # the pidfd: never a reused pid
            signal.pidfd_send_signal(self.pidfd, signum)

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def close(self):
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class KeepingProvisioner(LocalProvisioner):
    """The local provisioner, for kernels that may outlive this server."""

    @property
    def adopted(self):
        return isinstance(self.process, AdoptedProcess)

    def adopt(self, pid, pidfd, connection_info):
        self.process = AdoptedProcess(pid, pidfd)
        self.pid = pid
        self.pgid = os.getpgid(pid)
        self.connection_info = connection_info
        self.ports_cached = True  # a restart reuses the kernel's ports, as for a new one

    async def launch_kernel(self, cmd, **kwargs):
        kwargs["independent"] = True
        output = self._open_output()
        if output is not None:
            kwargs.setdefault("stdout", output)
            kwargs.setdefault("stderr", output)
        try:
            info = await super().launch_kernel(cmd, **kwargs)
        finally:
            if output is not None:
                os.close(output)
        # Now, while the kernel is still starting its interpreter: what it starts inherits it.
        _raise_oom_score(self.pid, self._mapping().kernel_oom_score_adj)
        await self._place()
        return info

    async def _place(self):
        """Tell jlservice of the kernel (whose pid is which notebook's) and have it put into
        its memory cgroup ([kernels] memory_max), before anyone can run a cell in it."""
        path = getattr(self._mapping(), "limits_socket", "")
        if not path or not os.path.exists(path):
            return
        request = json.dumps({"kernel_id": self.kernel_id, "pid": self.pid}).encode() + b"\n"
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5)
            writer.write(request)
            answer = (await asyncio.wait_for(reader.readline(), 10)).decode(errors="replace")
            writer.close()
        except (OSError, asyncio.TimeoutError) as exc:
            answer = f"no answer ({exc})"
        if answer.strip() != "ok":
            self.log.warning("jlservice: kernel %s has no memory limit: %s", self.kernel_id, answer)

    def _mapping(self):
        return getattr(self.parent, "parent", None)

    def _open_output(self):
        """jlservice's kernel-output FIFO, for writing; None without one (or no reader)."""
        path = getattr(self._mapping(), "kernel_output", "")
        if not path:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # ENXIO: jlservice does not read it (it is gone, or stopping)
            return None
        os.set_blocking(fd, True)
        return fd

    def _finalize_env(self, env):
        super()._finalize_env(env)
        _scrub(env)
        env.pop("JPY_PARENT_PID", None)

    async def send_signal(self, signum):
        if self.adopted:
            if self.process.poll() is not None:
                return
            try:  # the process group, as for a kernel this server started
                os.killpg(self.pgid, signum)
            except OSError:
                self.process.send_signal(signum)
            return
        await super().send_signal(signum)

    async def wait(self):
        if not self.adopted:
            return await super().wait()
        await self.process.exited()
        self.process.close()
        self.process = None
        return 0


def _uses_local_provisioner(kernel_manager):
    spec = kernel_manager.kernel_spec
    factory = KernelProvisionerFactory.instance(parent=kernel_manager.parent)
    stanza = (getattr(spec, "metadata", None) or {}).get("kernel_provisioner") or {}
    name = stanza.get("provisioner_name", factory.default_provisioner_name)
    return name == "local-provisioner"


class KeepingKernelManager(ServerKernelManager):
    kept = False  # left running at this server's exit: its connection file stays

    async def _async_pre_start_kernel(self, **kw):
        if self.provisioner is None and _uses_local_provisioner(self):
            self.kernel_id = self.kernel_id or kw.pop("kernel_id", None)
            self.provisioner = KeepingProvisioner(
                kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self
            )
        return await super()._async_pre_start_kernel(**kw)

    def cleanup_connection_file(self):
        if not self.kept:
            super().cleanup_connection_file()


def _ask_control(km, timeout=10.0):
    """The kernel's info (its protocol version, which websockets adapt to), asked on its
    control channel, which ipykernel answers even while a cell runs."""
    future = km._kernel_info_future
    stream = km.connect_control()

    def answered(parts):
        _, parts = km.session.feed_identities(parts)
        if not future.done():
            future.set_result(km.session.deserialize(parts)["content"])
        stream.close()

    def give_up():
        if not future.done():
            future.set_result({})
        if not stream.closed():
            stream.close()

    stream.on_recv(answered)
    km.session.send(stream, km.session.msg("kernel_info_request"))
    IOLoop.current().call_later(timeout, give_up)


def _ask_shell(km):
    """A kernel_info request on its shell: the reply comes once any cell it runs is done,
    and then the kernel is idle (a later cell's own status says busy again)."""
    stream = km.connect_shell()

    def answered(_parts):
        if km.execution_state == "busy":
            km.execution_state = "idle"
        stream.close()

    stream.on_recv(answered)
    km.session.send(stream, km.session.msg("kernel_info_request"))


class _Took:
    """Time taken since it was made, as the log says it: the wall clock and this process's
    CPU time (what the work costs, whatever else the machine runs meanwhile)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __str__(self):
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return f"{wall * 1000:.1f} ms ({cpu * 1000:.1f} ms of CPU)"


class KeepingMappingKernelManager(AsyncMappingKernelManager):
    handover_file = Unicode(
        "", config=True, help="jlservice's handover: the kernels to adopt, whether to keep them"
    )
    kernel_output = Unicode("", config=True, help="jlservice's FIFO for the kernels' output")
    limits_socket = Unicode("", config=True, help="jlservice's socket that places kernels")
    kernel_oom_score_adj = Integer(
        None, allow_none=True, config=True, help="oom_score_adj of kernels and what this forks"
    )

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self):
        return f"{__name__}.KeepingKernelManager"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.kernel_oom_score_adj is not None:  # a terminal's shell, a forked helper
            value = self.kernel_oom_score_adj
            os.register_at_fork(after_in_child=lambda: _raise_oom_score("self", value))
        began = _Took()
        adopted, specs = {}, {}
        for entry in self._handover().get("kernels", []):
            try:
                kernel_id, pid = str(entry["id"]), int(entry["pid"])
                self._adopt(kernel_id, pid, specs)
                adopted[kernel_id] = pid
            except Exception as exc:  # jlservice ends what is not adopted: say why
                self.log.error("jlservice: cannot adopt kernel %s: %s", entry, exc)
        if adopted:
            named = ", ".join(f"{k} (pid {pid})" for k, pid in adopted.items())
            # One line for all: a write to the pipe jlservice reads costs as much as an adoption.
            self.log.info("jlservice: adopted %d kernels in %s: %s", len(adopted), began, named)
            IOLoop.current().add_callback(self._watch_adopted, list(adopted))

    def _handover(self):
        if not self.handover_file:
            return {}
        try:
            return _read_json(self.handover_file)
        except (OSError, ValueError) as exc:
            self.log.error("jlservice: cannot read %s: %s", self.handover_file, exc)
            return {}

    def _adopt(self, kernel_id, pid, specs):
        """Register the running kernel `kernel_id` (process `pid`) as if started here.
        `specs`: the kernelspecs by name, looked up once for all the adopted kernels."""
        connection_file = os.path.join(self.connection_dir, f"kernel-{kernel_id}.json")
        info = _read_json(connection_file)
        pidfd = os.pidfd_open(pid)
        try:
            if not _names(pid, connection_file):
                raise LookupError(f"pid {pid} no longer runs with {connection_file}")
            km = self.kernel_manager_factory(
                connection_file=connection_file,
                parent=self,
                log=self.log,
                kernel_name=info.get("kernel_name") or self.default_kernel_name,
                kernel_spec_manager=self.kernel_spec_manager,
            )
            km.load_connection_info(info)
            if km.kernel_name not in specs:
                specs[km.kernel_name] = km.kernel_spec
            km._kernel_spec = specs[km.kernel_name]  # read, never changed, by its users
            km.kernel_id = kernel_id
            km._launch_args = {"env": _environ(pid), "cwd": os.readlink(f"/proc/{pid}/cwd")}
            provisioner = KeepingProvisioner(
                kernel_id=kernel_id, kernel_spec=km.kernel_spec, parent=km
            )
            provisioner.adopt(pid, pidfd, km.get_connection_info())
        except BaseException:
            os.close(pidfd)
            raise
        km.provisioner = provisioner
        km._connection_file_written = True  # removed when it is shut down, as ours
        km._attempted_start = True
        loop = IOLoop.current().asyncio_loop
        # Done, and of the loop (as a kernel started here has): awaiting it does not yield,
        # so that the kernels are watched in one go (_watch_adopted).
        km._ready = loop.create_future()
        km._ready.set_result(None)
        # Maybe running a cell: busy until its shell answers (_ask_shell). Never "starting",
        # which a new websocket waits out: that would be until the cell ends.
        km.execution_state = "busy"
        # Asked on the control channel once the loop runs (_ask_control): a websocket would
        # ask the shell, which answers only once a running cell is done.
        km._kernel_info_future = loop.create_future()
        km.reason = ""
        km.last_activity = utcnow()
        self._kernels[kernel_id] = km
        self._kernel_connections[kernel_id] = 0

    async def _watch_adopted(self, kernel_ids):
        """What starting a kernel sets up once the loop runs: restarter, activity, the
        dead-kernel callback, the culler. Its control socket is connected when first needed
        (an interrupt, a shutdown), as jupyter_client does."""
        began = _Took()
        for kernel_id in kernel_ids:
            km = self._kernels.get(kernel_id)
            if km is None:
                continue
            km.start_restarter()
            await self._finish_kernel_start(kernel_id)
            _ask_control(km)
            _ask_shell(km)
        self.initialize_culler()
        self.log.info("jlservice: watching %d adopted kernels in %s", len(kernel_ids), began)

    async def shutdown_all(self, now=False):
        """At this server's exit: leave the kernels to jlservice if it keeps them."""
        if self._handover().get("keep") is not True:
            return await super().shutdown_all(now=now)
        self.log.info("jlservice: leaving %d kernels running for the next server", len(self))
        for km in list(self._kernels.values()):
            km.kept = True
            km.stop_restarter()


# ── the listening socket jlservice holds across restarts (jlservice/start/listening.py) ──

LISTEN_FDS = "JLSERVICE_LISTEN_FDS"
_BINDS = ("_find_http_port", "_bind_http_server_tcp")  # jupyter_server 2.10 to 2.21 at least


def _jupyter_server_extension_points():
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp):
    """Serve the listening sockets jlservice hands over instead of binding the port: they
    stay open across this server's restart, so a connection made meanwhile waits for the
    next server instead of being refused. Runs before the server binds (init_httpserver)."""
    listen = os.environ.pop(LISTEN_FDS, "")  # kernels and terminals never see it
    if not listen:
        return  # not started by jlservice with a socket: it binds itself
    missing = [name for name in _BINDS if not callable(getattr(type(serverapp), name, None))]
    if missing:
        serverapp.log.critical(
            "jlservice: this jupyter_server has no %s to serve jlservice's listening socket "
            "with; set [kernels] survive_restarts = false, or use jupyter_server 2.10 to 2.x",
            " or ".join(missing),
        )
        serverapp.exit(1)
    import socket

    sockets = []
    for fd in map(int, listen.split(",")):
        os.set_inheritable(fd, False)  # terminals fork and exec without closing fds
        sockets.append(socket.socket(fileno=fd))
        sockets[-1].setblocking(False)

    def bind():
        serverapp.http_server.add_sockets(sockets)
        return True

    serverapp._find_http_port = lambda: None  # its test bind would find the port in use
    serverapp._bind_http_server_tcp = bind
