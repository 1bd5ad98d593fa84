"""Adoption: the kernels a previous JupyterLab started, which jlservice kept and hands
over, registered with this one's mapping kernel manager as if it had started them.

Runs inside JupyterLab as the module `jlservice_adoption`, imported by jlservice_kernels
(KeepingMappingKernelManager, at start-up). Each kernel is registered under its own id,
from its connection file, after checking that the pid still names that file, with an
AdoptedProcess for its process: a pidfd, since this server is not its parent (jlservice,
the child subreaper, is, and reaps it), and a pidfd tells of the exit without polling and
pins the pid. Once the loop runs, each is set up as a kernel started here is: restarter,
activity tracking, the dead-kernel callback, culling.
"""

import asyncio
import json
import os
import select
import signal
import time

from jupyter_server._tz import utcnow
from tornado.ioloop import IOLoop

MAX_FILE = 1 << 20  # the handover and a connection file are a few hundred bytes each
SESSION_NAME = b"JPY_SESSION_NAME"  # jupyter_server's: the notebook a kernel is for


def adopt(manager, entries, provisioner_class):
    """Register the kernels of the handover's `entries` with the mapping kernel manager
    `manager`, as if started there, each with a provisioner of `provisioner_class` (the
    KeepingProvisioner) holding its process; then, once the loop runs, watch them."""
    began = _Took()
    adopted, specs = {}, {}
    for entry in entries:
        try:
            kernel_id, pid = str(entry["id"]), int(entry["pid"])
            _adopt(manager, kernel_id, pid, specs, provisioner_class)
            adopted[kernel_id] = pid
        except Exception as exc:  # jlservice ends what is not adopted: say why
            manager.log.error("jlservice: cannot adopt kernel %s: %s", entry, exc)
    if adopted:
        named = ", ".join(f"{k} (pid {pid})" for k, pid in adopted.items())
        # One line for all: a write to the pipe jlservice reads costs as much as an adoption.
        manager.log.info("jlservice: adopted %d kernels in %s: %s", len(adopted), began, named)
        IOLoop.current().add_callback(_watch, manager, list(adopted))


def _adopt(manager, kernel_id, pid, specs, provisioner_class):
    """Register the running kernel `kernel_id` (process `pid`) as if started here.
    `specs`: the kernelspecs by name, looked up once for all the adopted kernels."""
    connection_file = os.path.join(manager.connection_dir, f"kernel-{kernel_id}.json")
    info = read_json(connection_file)
    pidfd = os.pidfd_open(pid)
    try:
        if not _names(pid, connection_file):
            raise LookupError(f"pid {pid} no longer runs with {connection_file}")
        km = manager.kernel_manager_factory(
            connection_file=connection_file,
            parent=manager,
            log=manager.log,
            kernel_name=info.get("kernel_name") or manager.default_kernel_name,
            kernel_spec_manager=manager.kernel_spec_manager,
        )
        km.load_connection_info(info)
        if km.kernel_name not in specs:
            specs[km.kernel_name] = km.kernel_spec
        km._kernel_spec = specs[km.kernel_name]  # read, never changed, by its users
        km.kernel_id = kernel_id
        km._launch_args = {"env": _restart_env(pid), "cwd": os.readlink(f"/proc/{pid}/cwd")}
        provisioner = provisioner_class(kernel_id=kernel_id, kernel_spec=km.kernel_spec, parent=km)
        provisioner.adopt(pid, pidfd, km.get_connection_info())
    except BaseException:
        os.close(pidfd)
        raise
    km.provisioner = provisioner
    km._connection_file_written = True  # removed when it is shut down, as ours
    km._attempted_start = True
    loop = IOLoop.current().asyncio_loop
    # Done, and of the loop (as a kernel started here has): awaiting it does not yield,
    # so that the kernels are watched in one go (_watch).
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
    manager._kernels[kernel_id] = km
    manager._kernel_connections[kernel_id] = 0


async def _watch(manager, kernel_ids):
    """What starting a kernel sets up once the loop runs: restarter, activity, the
    dead-kernel callback, the culler; and the kernel's info, asked once on a control
    stream of its own (closed once answered). The kernel manager's own control socket is
    connected when first needed (an interrupt, a shutdown), as jupyter_client does."""
    began = _Took()
    for kernel_id in kernel_ids:
        km = manager._kernels.get(kernel_id)
        if km is None:
            continue
        km.start_restarter()
        await manager._finish_kernel_start(kernel_id)
        _ask_control(km)
        _ask_shell(km)
    manager.initialize_culler()
    manager.log.info("jlservice: watching %d adopted kernels in %s", len(kernel_ids), began)


def read_json(path):
    with open(path, "rb") as f:
        data = json.loads(f.read(MAX_FILE))
    return data if isinstance(data, dict) else {}


def _names(pid, connection_file):
    """Whether process `pid` runs with `connection_file` on its command line."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read(MAX_FILE).split(b"\0")
    wanted = {os.fsencode(connection_file), os.fsencode(os.path.realpath(connection_file))}
    return any(arg in wanted for arg in argv)


def _restart_env(pid):
    """What a restart of kernel `pid` starts with: what a fresh start here is given (this
    JupyterLab's environment and the notebook's name), not the running kernel's own, which
    holds what its kernelspec and activation scripts added (they would apply twice)."""
    env = dict(os.environ)
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = f.read(MAX_FILE).split(b"\0")
    for pair in pairs:
        key, sep, value = pair.partition(b"=")
        if sep and key == SESSION_NAME:
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
