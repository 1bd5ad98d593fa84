"""Kernels that outlive the JupyterLab that started them ([kernels] survive_restarts).

Runs inside JupyterLab (jupyter_server >= 2.10, jupyter_client >= 8) as the module
`jlservice_kernels`, from a directory jlservice puts first on JupyterLab's PYTHONPATH;
jlservice_notices (inlab/notices) takes it out of os.environ once loaded, and this module out
of each kernel's environment, so kernels and terminals never have it on their path or in
their environment.

- KeepingProvisioner: the local provisioner, with kernels launched independent (no
  JPY_PARENT_PID: ipykernel then does not exit with this server), their oom_score_adj raised
  as they start (the OOM killer takes a kernel before this server), and their output on
  jlservice's kernel-output FIFO, which jlservice reads for as long as it runs, so that no
  kernel dies of SIGPIPE when this server is gone. It also holds an adopted kernel's
  process (jlservice_adoption.AdoptedProcess, a pidfd).
- KeepingKernelManager: a ServerKernelManager with that provisioner.
- KeepingMappingKernelManager: at start-up, adopts each kernel jlservice hands over (the
  handover file jlservice writes; jlservice_adoption); at exit it leaves the kernels running
  when the handover says to keep them, which jlservice says just before it stops this
  server for a restart (and never when it died: its parent-death signal is a SIGTERM as
  well).

jlservice decides which processes are kept and ends those not adopted in time; this code
only adopts what it is handed, after checking that the pid still names the kernel's
connection file.
"""

import asyncio
import json
import os

from jlservice_adoption import AdoptedProcess, adopt, read_json
from jlservice_notices import scrub
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
)
from traitlets import Integer, Unicode, default


def _raise_oom_score(pid, value):
    """Raise `pid`'s oom_score_adj to `value` (anyone may raise it; lowering needs root)."""
    if value is None:
        return
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError:
        pass  # gone already, or /proc is read-only here: the kernel runs on unranked


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
        scrub(env)
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
        adopt(self, self._handover().get("kernels", []), KeepingProvisioner)

    def _handover(self):
        if not self.handover_file:
            return {}
        try:
            return read_json(self.handover_file)
        except (OSError, ValueError) as exc:
            self.log.error("jlservice: cannot read %s: %s", self.handover_file, exc)
            return {}

    async def shutdown_all(self, now=False):
        """At this server's exit: leave the kernels to jlservice if it keeps them."""
        if self._handover().get("keep") is not True:
            return await super().shutdown_all(now=now)
        self.log.info("jlservice: leaving %d kernels running for the next server", len(self))
        for km in list(self._kernels.values()):
            km.kept = True
            km.stop_restarter()
