"""A real nginx for tests: foreground, own prefix, loopback port, ended by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from .procs import stop, wait_for

NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class Nginx:
    def __init__(self, prefix: Path, site: str) -> None:
        """`site`: what `jlservice nginx` printed (included in the http block)."""
        self.prefix = prefix
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "temp").mkdir(mode=0o777, exist_ok=True)
        (prefix / "temp").chmod(0o777)  # workers run as another user when root starts nginx
        (prefix / "site.conf").write_text(site)
        temp = prefix / "temp"
        (prefix / "nginx.conf").write_text(
            "worker_processes 1;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            f"    access_log {prefix / 'access.log'};\n"
            + "".join(
                f"    {kind}_temp_path {temp / kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"    include {prefix / 'site.conf'};\n"
            "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _args(self) -> list[str]:
        return [
            NGINX,
            "-p",
            str(self.prefix),
            "-c",
            str(self.prefix / "nginx.conf"),
            "-e",
            str(self.prefix / "error.log"),
            "-g",
            f"daemon off; pid {self.prefix / 'nginx.pid'};",
        ]

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run([*self._args(), "-t"], capture_output=True, text=True, timeout=60)

    def start(self, port: int) -> Nginx:
        self.proc = subprocess.Popen(
            self._args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError("nginx exited: " + self.error_log())
            import socket

            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 30, "nginx to listen")
        return self

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""

    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, 20, signal.SIGQUIT)  # graceful: the master ends its workers
